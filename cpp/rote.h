// Rotary time embeddings (RoTE) of Music Flamingo 2601 / Audio Flamingo Next: the angles by which the audio
// encoder's output is rotated before the projector, as transformers' MusicFlamingoRotaryEmbedding computes them.
//
// Axial over two axes, each `dim` dims (adjacent pairs share an angle): the window's index in the track and the
// position inside the window, both modulated by the absolute timestamp of the position (seconds). The parameters
// are a function of the checkpoint's config; `music-flamingo convert` writes them into the mmproj
// (music_flamingo.rote.*). The rotation itself runs inside llama.cpp's audio graph
// (third_party/patches/0001-mtmd-audio-rotation-before-projector.patch).
#pragma once

#include <string>
#include <vector>

namespace mf {

struct RoteParams {
    int dim = 0;                 // dims per axis (int(encoder width * partial_rotary_factor)); 0: no RoTE
    float theta = 1200.0f;       // rope_theta
    float max_positions = 1200;  // max_position_embeddings (= rope_theta in MusicFlamingoConfig)
    float frame_step = 0.01f;    // seconds per mel frame (audio_frame_step)

    int rot_dim() const { return 2 * dim; }  // dims rotated: window axis, then time axis
};

// The mmproj's music_flamingo.rote.* keys; dim 0 when it has none (the preview). Throws ModelFileError when
// the file cannot be read as GGUF.
RoteParams read_rote_params(const std::string & mmproj_path);

// cos and sin (n_tokens x rot_dim, position-major) for positions 0..n_tokens-1 of window `window` (0-based) of a
// track, whose windows hold `window_tokens` positions each (750 for 30 s): float32 in the reference's order of
// operations, so the angles (up to ~3e4 rad) round as the reference's do.
void rote_cos_sin(const RoteParams & p, int window, int n_tokens, int window_tokens, std::vector<float> & cos_out,
                  std::vector<float> & sin_out);

}  // namespace mf
