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

// Winograd F(4x4, 3x3) through the dispatcher, against ATen's direct conv.
void test_winograd_conv3x3() {
  auto& dispatcher = c10::Dispatcher::singleton();
  auto pack = dispatcher.findSchemaOrThrow("scratchdet::winograd_f43_pack", "")
                  .typed<at::Tensor(const at::Tensor&)>();
  auto conv = dispatcher.findSchemaOrThrow("scratchdet::winograd_conv3x3", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&, bool)>();
  at::manual_seed(0);
  auto x = at::randn({2, 10, 13, 9}), w = at::randn({7, 10, 3, 3}) / 10.0, b = at::randn({7});
  auto out = conv.call(x, pack.call(w), b, std::nullopt, true);
  auto want = at::relu(at::conv2d(x, w, b, 1, 1));
  const double err = (out - want).abs().max().item<double>() / want.abs().max().item<double>();
  expect(out.sizes() == want.sizes() && err < 5e-5, "winograd_conv3x3 matches conv2d (rel err " +
                                                        std::to_string(err) + ")");
  bool threw = false;
  try {
    conv.call(x, w, b, std::nullopt, true);  // an unpacked weight
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("packed_weight of shape [36, C_in, C_out]") != std::string::npos;
  }
  expect(threw, "winograd_conv3x3 rejects an unpacked weight with a clear message");
}

}  // namespace

int main() {
  const std::string info = scratchdet::build_info();
  std::cout << "build_info: " << info << "\n";
  expect(info.find("cpu=1") != std::string::npos, "build_info reports CPU kernels");
  test_box_iou();
  test_winograd_conv3x3();
  std::cout << (failures ? "FAILED" : "ALL PASSED") << "\n";
  return failures ? 1 : 0;
}
