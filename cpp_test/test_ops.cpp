// Calls the scratchdet ops through the dispatcher, as a LibTorch user would.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <iostream>
#include <string>

#include "scratchdet.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

void test_box_iou() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("scratchdet::box_iou", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  auto a = at::tensor({0.f, 0.f, 2.f, 2.f}).view({1, 4});
  auto b = at::tensor({0.f, 0.f, 2.f, 2.f, 1.f, 0.f, 3.f, 2.f, 5.f, 5.f, 6.f, 6.f}).view({3, 4});
  auto iou = op.call(a, b);
  expect(iou.sizes() == at::IntArrayRef({1, 3}), "box_iou shape [1, 3]");
  expect(std::abs(iou[0][0].item<float>() - 1.f) < 1e-6f, "box_iou identical boxes = 1");
  expect(std::abs(iou[0][1].item<float>() - 1.f / 3.f) < 1e-6f, "box_iou half overlap = 1/3");
  expect(iou[0][2].item<float>() == 0.f, "box_iou disjoint = 0");
  bool threw = false;
  try {
    op.call(at::zeros({2, 5}), b);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("boxes1 of shape [N, 4]") != std::string::npos;
  }
  expect(threw, "box_iou rejects a [2, 5] tensor with a clear message");
}

}  // namespace

int main() {
  const std::string info = scratchdet::build_info();
  std::cout << "build_info: " << info << "\n";
  expect(info.find("cpu=1") != std::string::npos, "build_info reports CPU kernels");
  test_box_iou();
  std::cout << (failures ? "FAILED" : "ALL PASSED") << "\n";
  return failures ? 1 : 0;
}
