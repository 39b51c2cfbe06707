// ESP seal/open for batches of packets with one long-lived OpenSSL context per SA.
// See esp-native.cc.
#pragma once
#include <napi.h>

namespace fsesp {
void InitEsp(Napi::Env env, Napi::Object exports);
}
