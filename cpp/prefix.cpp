#include "prefix.h"

#include "audio_window.h"
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

using ChunksPtr = mtmd::input_chunks_ptr;  // mtmd's own (mtmd.h)
using BitmapPtr = mtmd::bitmap_ptr;

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
        if (int r = mtmd_tokenize(ctx_.mtmd, chunks.get(), &txt, bitmaps, 1)) {
            throw EngineError("mtmd could not tokenize the audio prompt (code " + std::to_string(r) + ")");
        }
        px.mel_ms += ms_since(t0);
        px.n_pos = (int) mtmd_helper_get_n_pos(chunks.get());
        const size_t n_embd = (size_t) llama_model_n_embd_inp(ctx_.model);
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
            PreparedPrefix::Piece piece;
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                size_t n = 0;
                const llama_token * toks = mtmd_input_chunk_get_tokens_text(ch, &n);
                piece.tokens.assign(toks, toks + n);
            } else {
                t0 = Clock::now();
                if (mtmd_encode_chunk(ctx_.mtmd, ch)) throw EngineError("mtmd failed to encode an audio window");
                px.encode_ms += ms_since(t0);
                piece.n_embd_tokens = (int) mtmd_input_chunk_get_n_tokens(ch);
                const float * e = mtmd_get_output_embd(ctx_.mtmd);
                piece.embd.assign(e, e + (size_t) piece.n_embd_tokens * n_embd);
                px.audio_chunks++;
                px.audio_tokens += piece.n_embd_tokens;
            }
            px.pieces.push_back(std::move(piece));
        }
        return px;
    }
};

// The reference's windows (audio_window.h: 30 s from the start, the last one partial, its tokens trimmed to its
// real length), the audio right after the chat head (the template's mid, "\n", starts each prompt's suffix).
//   ReferenceTrim: each window encoded by mtmd, padded to 30 s (the trimmed tokens still saw the padding);
//   ReferenceTail: as Trim, but a partial last window is the final 30 s of real audio (no padding encoded) and only
//                  its tokens after the previous window are kept;
//   Reference:     each window encoded over its real frames only (AudioWindowEncoder): what the reference's
//                  encoder mask computes, at every length.
class ReferencePlanner final : public PrefixPlanner {
public:
    ReferencePlanner(const PlannerContext & ctx, ChatPieces chat, Framing framing)
        : PrefixPlanner(ctx, std::move(chat)), framing_(framing) {}

    PreparedPrefix prepare(const std::vector<float> & pcm) override {
        PreparedPrefix px;
        add_head(px);
        const size_t L = pcm.size();
        const size_t n_embd = (size_t) llama_model_n_embd_inp(ctx_.model);
        for (const AudioWindow & w : plan_reference_windows(L)) {
            if (framing_ == Framing::Reference) {
                auto t0 = Clock::now();
                const int index = (int) (w.start / kWindowSamples);  // the window's place in the track (RoTE)
                const std::vector<float> e = ctx_.encoder->encode(pcm.data() + w.start, w.len, ctx_.n_threads, index);
                px.encode_ms += ms_since(t0);  // log-mel included
                add_audio(px, e.data(), w.n_tokens);
            } else if (framing_ == Framing::ReferenceTail && w.len < kWindowSamples && L >= kWindowSamples) {
                // the final 30 s of real audio; its last n_tokens tokens cover [w.start, L)
                const std::vector<float> e = encode_window_mtmd(pcm.data() + (L - kWindowSamples), kWindowSamples, px);
                add_audio(px, e.data() + (size_t) (kWindowTokens - w.n_tokens) * n_embd, w.n_tokens);
            } else if (w.len < kMinPaddedSamples) {
                // a sliver after a whole window (e.g. 30 s + 20 ms): mtmd's mel reflects 200 samples at the start;
                // zeros are what mtmd pads with anyway
                std::vector<float> padded(kMinPaddedSamples, 0.0f);
                std::copy(pcm.begin() + (long) w.start, pcm.begin() + (long) (w.start + w.len), padded.begin());
                const std::vector<float> e = encode_window_mtmd(padded.data(), padded.size(), px);
                add_audio(px, e.data(), w.n_tokens);
            } else {
                const std::vector<float> e = encode_window_mtmd(pcm.data() + w.start, w.len, px);
                add_audio(px, e.data(), w.n_tokens);
            }
        }
        if (px.audio_chunks == 0) throw InputError("audio shorter than 20 ms gives no audio token");
        return px;
    }

private:
    static constexpr size_t kMinPaddedSamples = 400;  // one n_fft window
    Framing framing_;
};

}  // namespace

int max_prefix_positions(const ChatPieces & chat, size_t n_samples) {
    const int text = (int) (chat.head.size() + 16);  // a token is at least one byte
    return text + kWindowTokens * (int) (n_samples / kWindowSamples + 2);
}

void PrefixPlanner::add_head(PreparedPrefix & px) const {
    const llama_vocab * vocab = llama_model_get_vocab(ctx_.model);
    PreparedPrefix::Piece head;
    head.tokens = tokenize(chat_.head, true);
    if (llama_vocab_get_add_bos(vocab)) head.tokens.insert(head.tokens.begin(), llama_vocab_bos(vocab));
    px.n_pos += (int) head.tokens.size();
    px.pieces.push_back(std::move(head));
}

void PrefixPlanner::add_audio(PreparedPrefix & px, const float * embd, int n_tokens) const {
    const size_t n_embd = (size_t) llama_model_n_embd_inp(ctx_.model);
    PreparedPrefix::Piece piece;
    piece.n_embd_tokens = n_tokens;
    piece.embd.assign(embd, embd + (size_t) n_tokens * n_embd);
    px.audio_tokens += n_tokens;
    px.audio_chunks++;
    px.n_pos += n_tokens;
    px.pieces.push_back(std::move(piece));
}

std::vector<int32_t> tokenize(const llama_vocab * vocab, const std::string & text, bool parse_special) {
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

std::vector<int32_t> PrefixPlanner::tokenize(const std::string & text, bool parse_special) const {
    return mf::tokenize(llama_model_get_vocab(ctx_.model), text, parse_special);
}

std::vector<float> PrefixPlanner::encode_window_mtmd(const float * pcm, size_t n, PreparedPrefix & px) {
    auto t0 = Clock::now();
    BitmapPtr bmp(mtmd_bitmap_init_from_audio(n, pcm));
    ChunksPtr chunks(mtmd_input_chunks_init());
    const char * marker = mtmd_default_marker();
    mtmd_input_text txt{marker, std::strlen(marker), false, true};
    const mtmd_bitmap * bitmaps[1] = {bmp.get()};
    if (!bmp || mtmd_tokenize(ctx_.mtmd, chunks.get(), &txt, bitmaps, 1)) throw EngineError("mtmd could not take the audio");
    px.mel_ms += ms_since(t0);
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
        const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
        t0 = Clock::now();
        if (mtmd_encode_chunk(ctx_.mtmd, ch)) throw EngineError("mtmd failed to encode an audio window");
        px.encode_ms += ms_since(t0);
        const size_t n_embd = (size_t) llama_model_n_embd_inp(ctx_.model);
        const float * e = mtmd_get_output_embd(ctx_.mtmd);
        return std::vector<float>(e, e + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
    }
    throw EngineError("mtmd produced no audio window");
}

std::unique_ptr<PrefixPlanner> make_planner(Framing framing, const PlannerContext & ctx, ChatPieces chat) {
    if (framing != Framing::Reference && ctx.encoder && ctx.encoder->has_rote()) {  // Music Flamingo 2601 / AF-Next
        throw InputError("this model has rotary time embeddings: only the 'reference' framing computes them");
    }
    switch (framing) {
        case Framing::Mtmd: return std::make_unique<MtmdPlanner>(ctx, std::move(chat));
        case Framing::ReferenceTrim:
        case Framing::ReferenceTail:
        case Framing::Reference: return std::make_unique<ReferencePlanner>(ctx, std::move(chat), framing);
    }
    throw InputError("unknown framing");
}

}  // namespace mf
