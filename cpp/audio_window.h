// The reference's audio framing (NVIDIA's code, transformers' AudioFlamingo3): 30 s windows from the start of the
// track, each encoded over its real frames only, the last one trimmed to its real length.
//
// The reference pads every window to 30 s and masks the padding inside the encoder; mtmd's encoder has no mask.
// The pinned tree's Whisper graph (tools/mtmd/models/whisper-enc.cpp) takes its frame count from the width of the
// mel it is given and slices the position embeddings to match, so handing it only the real frames of a window gives
// attention over exactly the keys the reference leaves unmasked. This module does that through the tree's clip API
// (tools/mtmd/clip.h, an internal header of mtmd: it builds against the pinned tree, not necessarily another one).
//
// Plain C++; errors are the engine's exception types (errors.h). Not thread-safe: one caller at a time.
#pragma once

#include "rote.h"
#include "types.h"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

struct clip_ctx;
struct clip_image_f32_batch;
struct mtmd_audio_preprocessor;

namespace mf {


// Tokens the reference keeps for n real samples of one window: mel frames ceil(n/160) (the feature extractor's
// attention mask), then the stride-2 conv and the stride-2 average pool (AudioFlamingo3Encoder.
// _get_feat_extract_output_lengths). 0 for fewer than 321 samples (20 ms).
int reference_tokens(size_t n_samples);

// Mel frames handed to the encoder for n real samples: the real frames rounded up to the conv's stride (2 per
// encoder position), so the encoder has exactly the positions the reference leaves unmasked.
int encoder_frames(size_t n_samples);

// One window of a track as the reference frames it.
struct AudioWindow {
    size_t start = 0, len = 0;  // samples [start, start + len) of the track; len <= kWindowSamples
    int n_tokens = 0;           // embeddings it contributes: reference_tokens(len)
};

// The reference's windows of a track of n samples: 30 s each, no overlap, the last one partial. A window too short
// to give a token (a track 0..20 ms past a multiple of 30 s) contributes nothing and is left out, as in the
// reference. Empty when the whole track is shorter than one token.
std::vector<AudioWindow> plan_reference_windows(size_t n_samples);

// Loads the audio encoder of an mmproj and encodes windows of PCM over their real frames.
class AudioWindowEncoder {
public:
    struct Params {
        std::string mmproj_path;
        bool use_gpu = true;
        FlashAttn flash_attn = FlashAttn::Auto;
        bool warmup = true;   // encode one 30 s window at load (allocates buffers, checks GPU ops)
    };
    explicit AudioWindowEncoder(const Params & params);
    ~AudioWindowEncoder();
    AudioWindowEncoder(const AudioWindowEncoder &) = delete;
    AudioWindowEncoder & operator=(const AudioWindowEncoder &) = delete;

    int n_embd() const;       // width of one embedding (the text model's n_embd)
    int sample_rate() const;  // the PCM rate encode() expects (16000)

    // Encodes pcm[0, n) (mono float, 1 <= n <= kWindowSamples) as one reference window: the log-mel of the window
    // padded to 30 s (normalised within the window, as the reference's feature extractor does), cut to
    // encoder_frames(n) frames, through the encoder and projector. Returns reference_tokens(n) x n_embd() floats.
    // Throws InputError when n gives no token, EngineError when the encoder fails.
    // `window`: the window's index in the track (0-based), for a model with rotary time embeddings (has_rote()).
    std::vector<float> encode(const float * pcm, size_t n, int n_threads, int window = 0);

    // Whether the mmproj asks for rotary time embeddings (Music Flamingo 2601 / AF-Next; rote.h).
    bool has_rote() const { return rote_.dim > 0; }

private:
    std::vector<float> run_encoder(clip_image_f32_batch & batch, int n_tokens, int n_pos, int window, int n_threads);

    // clip (mtmd's internal encoder API) ships no smart pointer: this one frees a clip_ctx with clip_free
    struct ClipFree { void operator()(clip_ctx * c) const; };
    using ClipPtr = std::unique_ptr<clip_ctx, ClipFree>;
    RoteParams rote_;
    ClipPtr ctx_;
    std::unique_ptr<mtmd_audio_preprocessor> mel_;
};

}  // namespace mf
