// A track's prefix: everything its first sequence holds before the prompts (chat head, the audio as embeddings,
// the separator). One planner per framing decides the windows and token runs; prepare() tokenizes and runs the
// audio encoder, so the result can be made on a helper thread while other tracks decode, and is then only fed to
// the LLM (BatchRun::eval_prefix).
#pragma once

#include "types.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct llama_model;
struct llama_vocab;
struct mtmd_context;

namespace mf {

class AudioWindowEncoder;

// Text to token ids with llama_tokenize (no BOS added). parse_special=false keeps a user's "<|im_end|>" as text.
// Empty text gives no tokens; text llama.cpp cannot tokenize is an InputError.
std::vector<int32_t> tokenize(const llama_vocab * vocab, const std::string & text, bool parse_special);

// What a planner may use: the text model (vocabulary, embedding width), the encoder of the default framing and
// mtmd's (the other framings; null until the engine made it), the CPU threads for the log-mel and encoder.
struct PlannerContext {
    const llama_model * model = nullptr;
    AudioWindowEncoder * encoder = nullptr;
    mtmd_context * mtmd = nullptr;
    int n_threads = 1;
};

struct PreparedPrefix {
    // A run of tokens or a run of audio embeddings (n_embd_tokens x n_embd floats), in order.
    struct Piece {
        std::vector<int32_t> tokens;
        std::vector<float> embd;
        int n_embd_tokens = 0;
    };
    std::vector<Piece> pieces;
    int n_pos = 0;          // positions the prefix takes
    int audio_chunks = 0;   // windows encoded
    int audio_tokens = 0;   // audio positions fed to the LLM
    double mel_ms = 0;      // log-mel (inside mtmd_tokenize)
    double encode_ms = 0;   // audio encoder
};

class PrefixPlanner {
public:
    PrefixPlanner(const PlannerContext & ctx, ChatPieces chat) : ctx_(ctx), chat_(std::move(chat)) {}
    virtual ~PrefixPlanner() = default;

    // Tokenizes the text, computes the mel and runs the audio encoder. Uses mtmd: one caller at a time.
    virtual PreparedPrefix prepare(const std::vector<float> & pcm) = 0;
    // A text-only track's prefix (no audio): the chat head alone (followup.h, the catch-up of follow-ups).
    PreparedPrefix prepare_text() const {
        PreparedPrefix px;
        add_head(px);
        return px;
    }

protected:
    std::vector<int32_t> tokenize(const std::string & text, bool parse_special) const;
    // The chat head as the first piece (BOS first when the vocabulary asks for it).
    void add_head(PreparedPrefix & px) const;
    // Encodes the first 30 s window of pcm[0, n) through mtmd (which pads shorter audio with zeros): 750 x n_embd.
    std::vector<float> encode_window_mtmd(const float * pcm, size_t n, PreparedPrefix & px);
    void add_audio(PreparedPrefix & px, const float * embd, int n_tokens) const;

    PlannerContext ctx_;
    ChatPieces chat_;
};

// At most how many positions the prefix of n_samples of audio takes, in any framing (sizes KV budgets before
// encoding): 750 per started 30 s window, one silent window more, and the text around it.
int max_prefix_positions(const ChatPieces & chat, size_t n_samples);

std::unique_ptr<PrefixPlanner> make_planner(Framing framing, const PlannerContext & ctx, ChatPieces chat);

// Audio shorter than this gives the reference no audio token (and mtmd's log-mel aborts on a few samples): an
// InputError before anything reaches mtmd.
constexpr size_t kMinAudioSamples = 321;  // 20 ms at 16 kHz

}  // namespace mf
