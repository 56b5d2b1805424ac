// Calls every scratchdet op through its typed C++ API (scratchdet::ops::<op>, which goes through
// the dispatcher), as a LibTorch user would, and checks a known answer for each.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <string>

#include "scratchdet.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-6) {
  return a.sizes() == b.sizes() && at::allclose(a, b, /*rtol=*/0.0, /*atol=*/tol);
}

// True when call() throws a c10::Error whose message contains `words`.
bool throws_with(const std::function<void()>& call, const std::string& words) {
  try {
    call();
  } catch (const c10::Error& e) {
    return std::string(e.what()).find(words) != std::string::npos;
  }
  return false;
}

// Two priors (cx, cy, w, h): the top-left and the bottom-right quarter of the image.
at::Tensor two_priors() { return at::tensor({0.25f, 0.25f, 0.5f, 0.5f, 0.75f, 0.75f, 0.5f, 0.5f}).view({2, 4}); }

void test_box_iou() {
  auto a = at::tensor({0.f, 0.f, 2.f, 2.f}).view({1, 4});
  auto b = at::tensor({0.f, 0.f, 2.f, 2.f, 1.f, 0.f, 3.f, 2.f, 5.f, 5.f, 6.f, 6.f}).view({3, 4});
  auto iou = scratchdet::ops::box_iou(a, b);
  expect(iou.sizes() == at::IntArrayRef({1, 3}), "box_iou shape [1, 3]");
  expect(close(iou, at::tensor({1.f, 1.f / 3.f, 0.f}).view({1, 3})), "box_iou: identical 1, half overlap 1/3, disjoint 0");
  expect(throws_with([&] { scratchdet::ops::box_iou(at::zeros({2, 5}), b); }, "boxes1 of shape [N, 4]"),
         "box_iou rejects a [2, 5] tensor with a clear message");
  expect(throws_with([&] { scratchdet::ops::box_iou(a.to(at::kLong), b.to(at::kLong)); },
                     "floating-point tensor (float16, bfloat16, float32 or float64), got torch.int64"),
         "box_iou names the dtype as Python does");
}

// The autocast kernels are registered with the library: bfloat16 boxes are compared in float32.
void test_autocast() {
  at::autocast::set_autocast_enabled(at::kCPU, true);
  auto iou = scratchdet::ops::box_iou(two_priors().to(at::kBFloat16), two_priors().to(at::kBFloat16));
  at::autocast::set_autocast_enabled(at::kCPU, false);
  at::autocast::clear_cache();
  expect(iou.scalar_type() == at::kFloat, "box_iou under CPU autocast computes in float32");
}

void test_match_priors() {
  // One image, one GT equal to prior 0 (label 3): prior 0 matches it exactly, prior 1 is background.
  auto gt_boxes = at::tensor({0.f, 0.f, 0.5f, 0.5f}).view({1, 1, 4});
  auto gt_labels = at::full({1, 1}, 3, at::kLong);
  auto [loc_t, conf_t, matched_iou] = scratchdet::ops::match_priors(two_priors(), gt_boxes, gt_labels);  // defaults
  expect(at::equal(conf_t, at::tensor({int64_t{3}, int64_t{0}}).view({1, 2})), "match_priors conf_t = [3, 0]");
  expect(close(matched_iou, at::tensor({1.f, 0.f}).view({1, 2})), "match_priors matched_iou = [1, 0]");
  expect(close(loc_t, at::zeros({1, 2, 4})), "match_priors loc_t: zero offsets for the exact match and background");
  expect(throws_with([&] { scratchdet::ops::match_priors(two_priors(), gt_boxes, gt_labels, 1.5); },
                     "expected iou_threshold in [0, 1], got 1.5"),
         "match_priors rejects iou_threshold 1.5");
}

void test_batched_nms() {
  // Box 1 overlaps box 0 (same class, IoU 0.9): suppressed; box 2 is another class: kept.
  auto boxes = at::tensor({0.f, 0.f, 1.f, 1.f, 0.f, 0.f, 1.f, 0.9f, 0.f, 0.f, 1.f, 1.f}).view({3, 4});
  auto scores = at::tensor({0.9f, 0.8f, 0.7f});
  auto idxs = at::tensor({int64_t{0}, int64_t{0}, int64_t{1}});
  auto keep = scratchdet::ops::batched_nms(boxes, scores, idxs, 0.5);
  expect(at::equal(keep, at::tensor({int64_t{0}, int64_t{2}})), "batched_nms keeps [0, 2]");
}

void test_detect() {
  // Zero offsets decode to the priors; only prior 0 is confident about class 1.
  auto loc = at::zeros({1, 2, 4});
  auto logits = at::tensor({0.f, 5.f, 5.f, 0.f}).view({1, 2, 2});
  auto [boxes, scores, labels, num] = scratchdet::ops::detect(loc, logits, two_priors());  // defaults
  expect(boxes.sizes() == at::IntArrayRef({1, 200, 4}), "detect pads to keep_top_k = 200 rows");
  expect(num.item<int64_t>() == 1 && labels[0][0].item<int64_t>() == 1 && labels[0][1].item<int64_t>() == -1,
         "detect: one detection of class 1, then padding");
  expect(close(boxes[0][0], at::tensor({0.f, 0.f, 0.5f, 0.5f})), "detect box = prior 0's box");
  expect(std::abs(scores[0][0].item<float>() - 1.f / (1.f + std::exp(-5.f))) < 1e-6f, "detect score = softmax");
}

void test_conv_bn_act() {
  at::manual_seed(0);
  auto x = at::randn({2, 3, 7, 6}), w = at::randn({4, 3, 3, 3}), b = at::randn({4}), r = at::randn({2, 4, 4, 3});
  auto out = scratchdet::ops::conv_bn_act(x, w, b, r, {2, 2}, {1, 1}, {1, 1}, 1, true);
  auto want = at::relu(at::conv2d(x, w, b, 2, 1) + r);
  expect(close(out, want, 1e-5), "conv_bn_act = relu(conv2d + residual)");
}

// Winograd F(4x4, 3x3) and F(6x6, 3x3) against ATen's direct conv.
void test_winograd_conv3x3() {
  at::manual_seed(0);
  auto x = at::randn({2, 10, 13, 9}), w = at::randn({7, 10, 3, 3}) / 10.0, b = at::randn({7});
  auto want = at::relu(at::conv2d(x, w, b, 1, 1));
  for (const auto& [name, packed] : {std::pair{"F(4x4, 3x3)", scratchdet::ops::winograd_f43_pack(w)},
                                     std::pair{"F(6x6, 3x3)", scratchdet::ops::winograd_f63_pack(w)}}) {
    auto out = scratchdet::ops::winograd_conv3x3(x, packed, b, std::nullopt, true);
    const double err = (out - want).abs().max().item<double>() / want.abs().max().item<double>();
    expect(out.sizes() == want.sizes() && err < 5e-5,
           std::string("winograd_conv3x3 ") + name + " matches conv2d (rel err " + std::to_string(err) + ")");
  }
  expect(throws_with([&] { scratchdet::ops::winograd_conv3x3(x, w, b, std::nullopt, true); },
                     "packed_weight of shape [36 or 64, C_in, C_out]"),
         "winograd_conv3x3 rejects an unpacked weight with a clear message");
}

// Training-mode BatchNorm + residual + ReLU against ATen's batch_norm, and its gradient on a
// known answer: for grad_out = 1 (no ReLU) the normalised values sum to zero, so grad_input and
// grad_weight vanish and grad_bias counts the values per channel.
void test_batch_norm_relu() {
  at::manual_seed(0);
  auto x = at::randn({2, 3, 4, 5}) * 2 + 1, w = at::randn({3}), b = at::randn({3}), r = at::randn({2, 3, 4, 5});
  const double eps = 1e-5;
  auto [out, save_mean, save_invstd] = scratchdet::ops::batch_norm_relu(x, w, b, r, eps, true);
  auto want = at::relu(at::batch_norm(x, w, b, {}, {}, /*training=*/true, /*momentum=*/0.1, eps, false) + r);
  expect(close(out, want, 1e-5), "batch_norm_relu = relu(batch_norm(x) + residual)");
  const auto var = x.var({0, 2, 3}, /*unbiased=*/false);
  expect(close(save_mean, x.mean({0, 2, 3}), 1e-5) && close(save_invstd, at::rsqrt(var + eps), 1e-4),
         "batch_norm_relu saves the batch mean and 1 / sqrt(biased var + eps)");
  auto [plain, mean0, invstd0] = scratchdet::ops::batch_norm_relu(x, std::nullopt, std::nullopt, std::nullopt, eps,
                                                                  false);
  auto [dx, dw, db, dr] = scratchdet::ops::batch_norm_relu_backward(at::ones_like(x), plain, x, w, mean0, invstd0,
                                                                    false, false);
  expect(close(dx, at::zeros_like(x), 1e-5) && close(dw, at::zeros({3}), 1e-4) &&
             close(db, at::full({3}, 40.0f)) && dr.numel() == 0,
         "batch_norm_relu_backward: grad_out = 1 gives grad_input 0, grad_weight 0, grad_bias = 40, no grad_residual");
  expect(throws_with([&] { scratchdet::ops::batch_norm_relu(x, w, b, r, 0.0, true); }, "expected eps > 0, got 0"),
         "batch_norm_relu rejects eps = 0 with a clear message");
}

}  // namespace

int main() {
  const std::string info = scratchdet::build_info();
  std::cout << "build_info: " << info << "\n";
  expect(info.find("cpu=1") != std::string::npos, "build_info reports CPU kernels");
  test_box_iou();
  test_autocast();
  test_match_priors();
  test_batched_nms();
  test_detect();
  test_conv_bn_act();
  test_winograd_conv3x3();
  test_batch_norm_relu();
  std::cout << (failures ? "FAILED" : "ALL PASSED") << "\n";
  return failures ? 1 : 0;
}
