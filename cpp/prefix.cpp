#include "prefix.h"

#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace mf {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct ChunksDeleter { void operator()(mtmd_input_chunks * c) const { mtmd_input_chunks_free(c); } };
struct BitmapDeleter { void operator()(mtmd_bitmap * b) const { mtmd_bitmap_free(b); } };
using ChunksPtr = std::unique_ptr<mtmd_input_chunks, ChunksDeleter>;
using BitmapPtr = std::unique_ptr<mtmd_bitmap, BitmapDeleter>;

constexpr size_t kWindowSamples = 30 * 16000;
constexpr int kWindowTokens = 750;

// Tokens the reference keeps for n real samples of a window: mel frames ceil(n/160), then the stride-2 conv and
// the stride-2 average pool (transformers AudioFlamingo3Encoder._get_feat_extract_output_lengths).
int reference_tokens(size_t n_samples) {
    const long frames = std::min<long>((long) ((n_samples + 159) / 160), 3000);
    const long conv = (frames - 1) / 2 + 1;
    return (int) ((conv - 2) / 2 + 1);
}

// What llama-mtmd-cli does: mtmd tokenizes "head<marker>" with the audio (one mel over the whole track, 750-token
// windows, a literal "<sound>" before them); every audio chunk is encoded here, in order.
class MtmdPlanner final : public PrefixPlanner {
public:
    using PrefixPlanner::PrefixPlanner;
    PreparedPrefix prepare(const std::vector<float> & pcm) override {
        PreparedPrefix px;
        auto t0 = Clock::now();
        BitmapPtr bmp(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
        if (!bmp) throw EngineError("mtmd could not take the audio");
        ChunksPtr chunks(mtmd_input_chunks_init());
        const std::string text = chat_.head + mtmd_default_marker();
        mtmd_input_text txt{text.c_str(), text.size(), /*add_special*/ true, /*parse_special*/ true};
        const mtmd_bitmap * bitmaps[1] = {bmp.get()};
        if (int r = mtmd_tokenize(mtmd_, chunks.get(), &txt, bitmaps, 1)) {
            throw EngineError("mtmd could not tokenize the audio prompt (code " + std::to_string(r) + ")");
        }
        px.mel_ms += ms_since(t0);
        px.n_pos = (int) mtmd_helper_get_n_pos(chunks.get());
        const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
            PreparedPrefix::Piece piece;
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                size_t n = 0;
                const llama_token * toks = mtmd_input_chunk_get_tokens_text(ch, &n);
                piece.tokens.assign(toks, toks + n);
            } else {
                t0 = Clock::now();
                if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
                px.encode_ms += ms_since(t0);
                piece.n_embd_tokens = (int) mtmd_input_chunk_get_n_tokens(ch);
                const float * e = mtmd_get_output_embd(mtmd_);
                piece.embd.assign(e, e + (size_t) piece.n_embd_tokens * n_embd);
                px.audio_chunks++;
                px.audio_tokens += piece.n_embd_tokens;
            }
            px.pieces.push_back(std::move(piece));
        }
        return px;
    }
};

// The reference (NVIDIA's code, transformers): one log-mel per 30 s window, the last window's tokens trimmed to its
// real length, no literal "<sound>", "\n" after the audio. `tail`: for audio of 30 s or more the last window is
// the final 30 s of real audio (no padding encoded) and only its tokens after the previous window are kept.
class ReferencePlanner final : public PrefixPlanner {
public:
    ReferencePlanner(mtmd_context * mtmd, const llama_model * model, ChatPieces chat, bool tail)
        : PrefixPlanner(mtmd, model, std::move(chat)), tail_(tail) {}

    PreparedPrefix prepare(const std::vector<float> & pcm) override {
        PreparedPrefix px;
        const llama_vocab * vocab = llama_model_get_vocab(model_);
        PreparedPrefix::Piece head;
        head.tokens = tokenize(chat_.head, true);
        if (llama_vocab_get_add_bos(vocab)) head.tokens.insert(head.tokens.begin(), llama_vocab_bos(vocab));
        px.n_pos += (int) head.tokens.size();
        px.pieces.push_back(std::move(head));

        const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
        const size_t L = pcm.size();
        for (size_t start = 0; start < L; start += kWindowSamples) {
            const size_t len = std::min(kWindowSamples, L - start);
            const int keep = len == kWindowSamples ? kWindowTokens : reference_tokens(len);
            std::vector<float> e;
            int keep_from = 0;
            if (len < kWindowSamples && tail_ && L >= kWindowSamples) {
                // the final 30 s of real audio; its last `keep` tokens cover [start, L)
                e = encode_window(pcm.data() + (L - kWindowSamples), kWindowSamples, px);
                keep_from = kWindowTokens - keep;
            } else if (len < kMinAudioSamples) {
                // a sliver after a whole window (e.g. 30 s + 1 sample): mtmd's mel needs one n_fft of samples;
                // zeros are what mtmd pads with anyway
                std::vector<float> padded(kMinAudioSamples, 0.0f);
                std::copy(pcm.begin() + (long) start, pcm.end(), padded.begin());
                e = encode_window(padded.data(), padded.size(), px);
            } else {
                e = encode_window(pcm.data() + start, len, px);
            }
            PreparedPrefix::Piece piece;
            piece.n_embd_tokens = keep;
            piece.embd.assign(e.begin() + (long) ((size_t) keep_from * n_embd),
                              e.begin() + (long) ((size_t) (keep_from + keep) * n_embd));
            px.audio_tokens += keep;
            px.audio_chunks++;
            px.n_pos += keep;
            px.pieces.push_back(std::move(piece));
        }
        PreparedPrefix::Piece sep;
        sep.tokens = tokenize("\n", false);
        px.n_pos += (int) sep.tokens.size();
        px.pieces.push_back(std::move(sep));
        return px;
    }

private:
    bool tail_;
};

}  // namespace

int max_prefix_positions(const ChatPieces & chat, size_t n_samples) {
    const int text = (int) (chat.head.size() + 16);  // a token is at least one byte
    return text + kWindowTokens * (int) (n_samples / kWindowSamples + 2);
}

std::vector<int32_t> PrefixPlanner::tokenize(const std::string & text, bool parse_special) const {
    const llama_vocab * vocab = llama_model_get_vocab(model_);
    if (text.empty()) return {};
    std::vector<int32_t> toks(text.size() + 8);
    int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), false,
                           parse_special);
    if (n < 0) {
        toks.resize((size_t) -n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), false,
                           parse_special);
    }
    if (n < 0) throw InputError("could not tokenize prompt text");
    toks.resize((size_t) n);
    return toks;
}

std::vector<float> PrefixPlanner::encode_window(const float * pcm, size_t n, PreparedPrefix & px) {
    auto t0 = Clock::now();
    BitmapPtr bmp(mtmd_bitmap_init_from_audio(n, pcm));
    ChunksPtr chunks(mtmd_input_chunks_init());
    const char * marker = mtmd_default_marker();
    mtmd_input_text txt{marker, std::strlen(marker), false, true};
    const mtmd_bitmap * bitmaps[1] = {bmp.get()};
    if (!bmp || mtmd_tokenize(mtmd_, chunks.get(), &txt, bitmaps, 1)) throw EngineError("mtmd could not take the audio");
    px.mel_ms += ms_since(t0);
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
        const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
        t0 = Clock::now();
        if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
        px.encode_ms += ms_since(t0);
        const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
        const float * e = mtmd_get_output_embd(mtmd_);
        return std::vector<float>(e, e + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
    }
    throw EngineError("mtmd produced no audio window");
}

std::unique_ptr<PrefixPlanner> make_planner(Framing framing, mtmd_context * mtmd, const llama_model * model,
                                            ChatPieces chat) {
    switch (framing) {
        case Framing::Mtmd: return std::make_unique<MtmdPlanner>(mtmd, model, std::move(chat));
        case Framing::ReferenceTrim: return std::make_unique<ReferencePlanner>(mtmd, model, std::move(chat), false);
        case Framing::ReferenceTail: return std::make_unique<ReferencePlanner>(mtmd, model, std::move(chat), true);
    }
    throw InputError("unknown framing");
}

}  // namespace mf
