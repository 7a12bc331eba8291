#include "audio_window.h"

#include "errors.h"

// mtmd's internal headers (tools/mtmd is mtmd's public include directory): the clip encoder, its image type and
// hparams, and a Whisper log-mel preprocessor.
#include "clip-impl.h"
#include "clip-model.h"
#include "clip.h"
#include "mtmd-audio.h"

#include <algorithm>
#include <cmath>

namespace mf {

namespace {

constexpr size_t kHop = 160;            // samples per mel frame (10 ms at 16 kHz)
constexpr int kWindowFrames = 3000;     // mel frames of a 30 s window
// sqrt(2^-24 / 1e-10): maps mtmd's mel energy floor (filter_params::mel_floor) onto the reference's (see encode())
const float kMelScale = (float) std::sqrt(5.960464477539063e-08 / 1e-10);

int real_frames(size_t n_samples) {
    return (int) std::min<size_t>((n_samples + kHop - 1) / kHop, kWindowFrames);
}

int conv_positions(int frames) { return (frames - 1) / 2 + 1; }  // stride-2 conv, kernel 3, padding 1

clip_flash_attn_type clip_fa(FlashAttn v) {
    switch (v) {
        case FlashAttn::Off: return CLIP_FLASH_ATTN_TYPE_DISABLED;
        case FlashAttn::On: return CLIP_FLASH_ATTN_TYPE_ENABLED;
        default: return CLIP_FLASH_ATTN_TYPE_AUTO;
    }
}

}  // namespace

int reference_tokens(size_t n_samples) {
    if (n_samples == 0) return 0;
    const int pos = conv_positions(real_frames(n_samples));
    return pos < 2 ? 0 : (pos - 2) / 2 + 1;  // stride-2 average pool of kernel 2
}

int encoder_frames(size_t n_samples) { return 2 * conv_positions(real_frames(n_samples)); }

std::vector<AudioWindow> plan_reference_windows(size_t n_samples) {
    std::vector<AudioWindow> out;
    for (size_t start = 0; start < n_samples; start += kWindowSamples) {
        const size_t len = std::min(kWindowSamples, n_samples - start);
        const int n_tokens = reference_tokens(len);
        if (n_tokens > 0) out.push_back({start, len, n_tokens});
    }
    return out;
}

AudioWindowEncoder::AudioWindowEncoder(const Params & p) {
    clip_context_params cp{};
    cp.use_gpu = p.use_gpu;
    cp.device = nullptr;
    cp.flash_attn_type = clip_fa(p.flash_attn);
    cp.image_min_tokens = -1;
    cp.image_max_tokens = -1;
    cp.warmup = p.warmup;
    clip_init_result r = clip_init(p.mmproj_path.c_str(), cp);
    ClipPtr audio(r.ctx_a), vision(r.ctx_v), generator(r.ctx_gen_a);  // only the audio encoder is kept
    if (!audio) throw ModelFileError("could not load the audio encoder of " + p.mmproj_path + " (see the log)");
    const projector_type type = clip_get_projector_type(audio.get());
    if (type != PROJECTOR_TYPE_MUSIC_FLAMINGO) {
        throw ModelFileError(p.mmproj_path + " is not a Music Flamingo audio encoder (projector type " +
                             std::to_string((int) type) + ")");
    }
    ctx_ = std::move(audio);
    rote_ = read_rote_params(p.mmproj_path);
#ifndef CLIP_HAS_AUDIO_ROTATION
    if (rote_.dim > 0) {
        throw ModelFileError(p.mmproj_path + " has rotary time embeddings, which need llama.cpp with the patches of "
                             "third_party/patches (this build's tree lacks them)");
    }
#endif
    // Whisper's log-mel of one 30 s chunk, normalised within the chunk (see encode())
    mel_ = std::make_unique<mtmd_audio_preprocessor_dots3note>(ctx_.get());
    mel_->initialize();
}

void AudioWindowEncoder::ClipFree::operator()(clip_ctx * c) const { clip_free(c); }

AudioWindowEncoder::~AudioWindowEncoder() {
    mel_.reset();  // holds a reference to the context's hparams: gone before the context
}

int AudioWindowEncoder::n_embd() const { return clip_n_mmproj_embd(ctx_.get()); }

int AudioWindowEncoder::sample_rate() const { return clip_get_hparams(ctx_.get())->audio_sample_rate; }

std::vector<float> AudioWindowEncoder::encode(const float * pcm, size_t n, int n_threads, int window_index) {
    if (n == 0 || n > kWindowSamples) throw InputError("an audio window must hold 1 sample to 30 s");
    const int n_tokens = reference_tokens(n);
    if (n_tokens < 1) throw InputError("audio shorter than 20 ms gives no audio token");

    // The reference's input_features: the window zero-padded to 30 s, an STFT with reflect padding at both ends
    // (center=True), 3000 frames, log10, clamped at the maximum of those 3000 frames minus 8, (x + 4) / 4. mtmd's
    // preprocessor for Dots3Note computes exactly that for a full 30 s chunk; its Whisper preprocessor (what
    // mtmd uses for this projector) does not: it pads zeros where the reference reflects, and takes the maximum
    // over frames past the window too, which shifts the clamp wherever the window ends on its loudest sound.
    //
    // One more difference: mtmd floors the mel energy at 2^-24 before log10, the reference at 1e-10. Both then clamp
    // at max - 8, so the floors only part in a quiet window (peak log-energy under 0.78), where mtmd's lifts the
    // quietest bins. Scaling the samples by s = sqrt(2^-24 / 1e-10) puts mtmd's floor exactly where the reference's
    // is (energies scale by s^2, both clamps move with them), and (x + 4) / 4 then reads log10(s) / 2 high, which
    // is subtracted below.
    std::vector<float> window(kWindowSamples, 0.0f);
    std::transform(pcm, pcm + n, window.begin(), [](float x) { return x * kMelScale; });
    std::vector<mtmd_audio_mel> mels;
    if (!mel_->preprocess(window.data(), window.size(), mels) || mels.size() != 1 ||
        mels[0].n_len != kWindowFrames) {
        throw EngineError("could not compute the log-mel spectrogram of an audio window");
    }
    const mtmd_audio_mel & mel = mels[0];
    // The real frames, and (patch 0002) the two after them: the last real position's first convolution reads frame
    // 2P of the reference's padded mel, which the graph would zero-pad; only the P real positions go on.
    const int n_pos = encoder_frames(n) / 2;
#ifdef CLIP_HAS_AUDIO_N_POS
    const int nx = std::min(encoder_frames(n) + 2, kWindowFrames);
#else
    const int nx = encoder_frames(n);
#endif
    std::vector<float> buf((size_t) mel.n_mel * nx);
    const float shift = (float) (std::log10((double) kMelScale) / 2.0);
    for (int64_t m = 0; m < mel.n_mel; m++) {  // mel-major rows, as clip reads them
        const float * row = mel.data.data() + (size_t) m * mel.n_len;
        std::transform(row, row + nx, buf.begin() + (size_t) m * nx, [shift](float v) { return v - shift; });
    }
    clip_image_f32_batch batch;  // as mtmd builds an audio chunk (mtmd.cpp, add_media for audio)
    batch.is_audio = true;
    batch.entries.emplace_back();
    clip_image_f32 & img = batch.entries.back();
    img.set_size({nx, (int) mel.n_mel}, /*is_placeholder*/ false, /*is_audio*/ true);
    img.cpy_buf(buf);
    if (n_pos / 2 != n_tokens) {
        throw EngineError("the audio encoder would give " + std::to_string(n_pos / 2) + " tokens for " +
                          std::to_string(n_tokens) + " expected");
    }
    return run_encoder(batch, n_tokens, n_pos, window_index, n_threads);
}

// The encoder and projector over one window; with RoTE, its output rotated in between (the patched clip graph).
std::vector<float> AudioWindowEncoder::run_encoder(clip_image_f32_batch & batch, int n_tokens, int n_pos, int window,
                                                   int n_threads) {
    std::vector<float> out((size_t) n_tokens * n_embd());
    clip_encode_params params;
    params.n_threads = n_threads;
    params.imgs = &batch;
    params.out_embd = &out;
#ifdef CLIP_HAS_AUDIO_N_POS
    params.audio_n_pos = n_pos;
#else
    (void) n_pos;
#endif
    std::vector<float> cos, sin;
#ifdef CLIP_HAS_AUDIO_ROTATION
    if (rote_.dim > 0) {
        rote_cos_sin(rote_, window, n_tokens, kWindowTokens, cos, sin);
        params.audio_rot_dim = rote_.rot_dim();
        params.audio_rot_cos = cos.data();
        params.audio_rot_sin = sin.data();
    }
#endif
    if (!clip_encode(ctx_.get(), &params)) throw EngineError("the audio encoder failed on a window");
    return out;
}

}  // namespace mf
