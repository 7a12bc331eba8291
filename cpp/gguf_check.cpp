#include "gguf_check.h"

#include "errors.h"
#include "ggml-cpp.h"
#include "gguf.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sys/stat.h>

namespace mf {
namespace {

constexpr const char * kExpectedProjector = "musicflamingo";

using GgufPtr = gguf_context_ptr;  // ggml's own (ggml-cpp.h)

// Opens `path` as a GGUF (metadata only). `what` names the role ("model", "mmproj") in messages.
GgufPtr open_gguf(const std::string & path, const char * what) {
    if (path.empty()) throw ModelFileError(std::string(what) + " path is empty");
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        throw ModelFileError(std::string(what) + " file not found: " + path + " (" + std::strerror(errno) + ")");
    }
    if (S_ISDIR(st.st_mode)) throw ModelFileError(std::string(what) + " path is a directory, not a GGUF file: " + path);
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) throw ModelFileError(std::string(what) + " file is not readable: " + path + " (" + std::strerror(errno) + ")");
    char magic[4] = {0, 0, 0, 0};
    size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw ModelFileError(std::string(what) + " file is not a GGUF file (bad magic): " + path);
    }
    gguf_init_params ip{/*no_alloc*/ true, /*ctx*/ nullptr};
    GgufPtr g(gguf_init_from_file(path.c_str(), ip));
    if (!g) throw ModelFileError(std::string(what) + " file has a corrupt or truncated GGUF header: " + path);
    return g;
}

std::string get_str(const gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) return "";
    return gguf_get_val_str(g, id);
}

bool get_bool(const gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    return id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_BOOL && gguf_get_val_bool(g, id);
}

}  // namespace

void check_text_model_file(const std::string & path) {
    GgufPtr g = open_gguf(path, "model");
    const std::string arch = get_str(g.get(), "general.architecture");
    if (arch == "clip") {
        throw ModelFileError("model file is an mmproj (audio/vision encoder), not a text model: " + path +
                             " (pass it as mmproj_path)");
    }
    if (arch.empty()) throw ModelFileError("model file has no general.architecture key: " + path);
}

void check_mmproj_file(const std::string & path) {
    GgufPtr g = open_gguf(path, "mmproj");
    const std::string arch = get_str(g.get(), "general.architecture");
    if (arch != "clip") {
        throw ModelFileError("mmproj file is not a multimodal projector (general.architecture = '" + arch + "'): " +
                             path + (arch.empty() ? "" : " (this looks like a text model; pass it as model_path)"));
    }
    if (!get_bool(g.get(), "clip.has_audio_encoder")) {
        throw ModelFileError("mmproj file has no audio encoder (clip.has_audio_encoder is not true): " + path);
    }
    std::string proj = get_str(g.get(), "clip.audio.projector_type");
    if (proj.empty()) proj = get_str(g.get(), "clip.projector_type");
    if (proj != kExpectedProjector) {
        throw ModelFileError("mmproj audio projector is '" + proj + "', expected '" + kExpectedProjector + "': " + path);
    }
}

}  // namespace mf
