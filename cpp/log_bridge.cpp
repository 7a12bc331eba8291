#include "log_bridge.h"

#include "ggml.h"
#include "llama.h"
#include "mtmd-helper.h"

#include <atomic>

namespace mf::logbridge {
namespace {

std::atomic<Sink> g_sink{nullptr};
std::atomic<int> g_min_level{GGML_LOG_LEVEL_WARN};

// Warnings llama.cpp prints on every start or run that no user can act on; they go out as DEBUG (with the rest of
// their message), so a terminal shows only what needs attention.
constexpr const char * kHarmless[] = {
    "init_audio: audio input is in experimental stage",  // mtmd, at every load of an audio mmproj
    "llama_context: n_ctx_seq",  // "> n_ctx_train": one unified cache for all sequences; each sequence's positions
                                 // are checked against the trained context by the engine
    "load: control-looking token",  // Qwen2 vocabulary's '</s>' type, at every load
};

bool harmless(const std::string & line) {
    for (const char * p : kHarmless) {
        if (line.rfind(p, 0) == 0) return true;
    }
    return false;
}

void callback(ggml_log_level level, const char * text, void *) {
    // Per-thread assembly: no lock is held while the sink runs (the sink takes the GIL).
    thread_local std::string pending;
    thread_local int pending_level = GGML_LOG_LEVEL_INFO;
    thread_local bool demoted = false;  // the current message started with a harmless warning
    if (!text) return;
    auto emit = [&](const std::string & line) {
        if (line.empty()) return;
        if (!demoted && pending_level >= GGML_LOG_LEVEL_WARN && harmless(line)) demoted = true;
        const int lvl = demoted ? GGML_LOG_LEVEL_DEBUG : pending_level;
        Sink s = g_sink.load();
        if (s && lvl >= g_min_level.load()) s(lvl, line);
    };
    if (level != GGML_LOG_LEVEL_CONT) {
        if (!pending.empty()) {  // a new message starts while the previous one had no newline: flush it
            emit(pending);
            pending.clear();
        }
        pending_level = level == GGML_LOG_LEVEL_NONE ? GGML_LOG_LEVEL_INFO : level;
        demoted = false;
    }
    pending += text;
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        emit(line);
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
