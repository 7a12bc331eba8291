#include "log_bridge.h"

#include "ggml.h"
#include "llama.h"
#include "mtmd-helper.h"

#include <atomic>

namespace mf::logbridge {
namespace {

std::atomic<Sink> g_sink{nullptr};
std::atomic<int> g_min_level{GGML_LOG_LEVEL_WARN};

void callback(ggml_log_level level, const char * text, void *) {
    // Per-thread assembly: no lock is held while the sink runs (the sink takes the GIL).
    thread_local std::string pending;
    thread_local int pending_level = GGML_LOG_LEVEL_INFO;
    if (!text) return;
    if (level != GGML_LOG_LEVEL_CONT) {
        if (!pending.empty()) {  // a new message starts while the previous one had no newline: flush it
            Sink s = g_sink.load();
            if (s && pending_level >= g_min_level.load()) s(pending_level, pending);
            pending.clear();
        }
        pending_level = level == GGML_LOG_LEVEL_NONE ? GGML_LOG_LEVEL_INFO : level;
    }
    pending += text;
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        Sink s = g_sink.load();
        if (s && !line.empty() && pending_level >= g_min_level.load()) s(pending_level, line);
    }
}

}  // namespace

void install() {
    llama_log_set(callback, nullptr);         // llama and ggml
    mtmd_helper_log_set(callback, nullptr);   // mtmd helper, and mtmd/clip through it
}

void set_sink(Sink sink) { g_sink.store(sink); }
void set_min_level(int level) { g_min_level.store(level); }
int min_level() { return g_min_level.load(); }

}  // namespace mf::logbridge
