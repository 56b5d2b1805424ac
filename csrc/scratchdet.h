#pragma once
// Public C++ entry of the scratchdet operator library. The ops themselves are
// reached through the dispatcher: c10::Dispatcher::singleton().findSchemaOrThrow(
// "scratchdet::<op>", "") or torch::ops-style calls.
#include <string>

namespace scratchdet {

// key=value pairs separated by ';': cpu, cuda, cuda_arch_list, torch_version, ...
std::string build_info();

}  // namespace scratchdet
