#include "rote.h"

#include "errors.h"
#include "gguf.h"

#include <cmath>
#include <memory>

namespace mf {

namespace {

constexpr double kPi = 3.14159265358979323846;

struct GgufFree {
    void operator()(gguf_context * c) const { gguf_free(c); }
};

float f32_key(const gguf_context * g, const char * key, float fallback) {
    const int64_t id = gguf_find_key(g, key);
    return id < 0 ? fallback : gguf_get_val_f32(g, id);
}

}  // namespace

RoteParams read_rote_params(const std::string & mmproj_path) {
    gguf_init_params ip{/*no_alloc*/ true, /*ctx*/ nullptr};
    std::unique_ptr<gguf_context, GgufFree> g(gguf_init_from_file(mmproj_path.c_str(), ip));
    if (!g) throw ModelFileError("could not read the GGUF metadata of " + mmproj_path);
    RoteParams p;
    const int64_t id = gguf_find_key(g.get(), "music_flamingo.rote.dim");
    if (id < 0) return p;
    p.dim = (int) gguf_get_val_u32(g.get(), id);
    p.theta = f32_key(g.get(), "music_flamingo.rote.theta", p.theta);
    p.max_positions = f32_key(g.get(), "music_flamingo.rote.max_positions", p.theta);
    p.frame_step = f32_key(g.get(), "music_flamingo.rote.frame_step", p.frame_step);
    if (p.dim <= 0 || p.dim % 2 != 0) throw ModelFileError(mmproj_path + ": music_flamingo.rote.dim must be even");
    return p;
}

// transformers (modeling_musicflamingo.py), all float32 tensors:
//   inv_freq[i]   = 1 / theta ** (2i / dim)
//   t(w, p)       = w * window_tokens * step4 + p * step4            (step4 = 4 * frame_step: conv stride, pool)
//   wpos          = round(t(w, 0) / (step4 * window_tokens)) / max_positions
//   angle_w[i]    = wpos * inv_freq[i] * (-t * 2 * pi)
//   angle_p[i]    = (p / max_positions * 2 pi) * inv_freq[i] * (-t * 2 * pi)
// dims [0, dim) take angle_w[j / 2], dims [dim, 2 dim) angle_p[(j - dim) / 2].
void rote_cos_sin(const RoteParams & p, int window, int n_tokens, int window_tokens, std::vector<float> & cos_out,
                  std::vector<float> & sin_out) {
    const int half = p.dim / 2, rot = p.rot_dim();
    std::vector<float> inv(half);
    for (int i = 0; i < half; i++) inv[i] = 1.0f / std::pow(p.theta, (float) (2 * i) / (float) p.dim);
    const float step4 = (float) (p.frame_step * 4.0);  // python float product, then float32
    const float t0 = (float) ((long long) window * window_tokens) * step4;
    const float duration = (float) ((double) p.frame_step * 4.0 * window_tokens);
    const float wpos = std::nearbyint(t0 / duration) / p.max_positions;
    const float two_pi = (float) (2.0 * kPi), pi = (float) kPi;
    cos_out.assign((size_t) n_tokens * rot, 0.0f);
    sin_out.assign((size_t) n_tokens * rot, 0.0f);
    for (int pos = 0; pos < n_tokens; pos++) {
        const float t = t0 + (float) pos * step4;
        const float angle = (-t * 2.0f) * pi;
        const float pa = (float) pos / p.max_positions * two_pi;
        float * c = cos_out.data() + (size_t) pos * rot;
        float * s = sin_out.data() + (size_t) pos * rot;
        for (int i = 0; i < half; i++) {
            const float fw = (wpos * inv[i]) * angle, fp = (pa * inv[i]) * angle;
            c[2 * i] = c[2 * i + 1] = std::cos(fw);
            s[2 * i] = s[2 * i + 1] = std::sin(fw);
            c[p.dim + 2 * i] = c[p.dim + 2 * i + 1] = std::cos(fp);
            s[p.dim + 2 * i] = s[p.dim + 2 * i + 1] = std::sin(fp);
        }
    }
}

}  // namespace mf
