// A track's prefix: everything its first sequence holds before the prompts (chat head, the audio as embeddings,
// the separator). One planner per framing decides the windows and token runs; prepare() tokenizes and runs the
// audio encoder, so the result can be made on a helper thread while other tracks decode, and is then only fed to
// the LLM (BatchRun::eval_prefix).
#pragma once

#include "engine.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct llama_model;
struct mtmd_context;

namespace mf {

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
    PrefixPlanner(mtmd_context * mtmd, const llama_model * model, ChatPieces chat)
        : mtmd_(mtmd), model_(model), chat_(std::move(chat)) {}
    virtual ~PrefixPlanner() = default;

    // Tokenizes the text, computes the mel and runs the audio encoder. Uses mtmd: one caller at a time.
    virtual PreparedPrefix prepare(const std::vector<float> & pcm) = 0;

protected:
    std::vector<int32_t> tokenize(const std::string & text, bool parse_special) const;
    // Encodes the first 30 s window of pcm[0, n) (mtmd pads shorter audio with zeros): 750 x n_embd floats.
    std::vector<float> encode_window(const float * pcm, size_t n, PreparedPrefix & px);

    mtmd_context * mtmd_;
    const llama_model * model_;
    ChatPieces chat_;
};

// At most how many positions the prefix of n_samples of audio takes, in any framing (sizes KV budgets before
// encoding): 750 per started 30 s window, one silent window more, and the text around it.
int max_prefix_positions(const ChatPieces & chat, size_t n_samples);

std::unique_ptr<PrefixPlanner> make_planner(Framing framing, mtmd_context * mtmd, const llama_model * model,
                                            ChatPieces chat);

// Audio shorter than this cannot be framed (mtmd's log-mel needs more than one hop): an InputError, not an abort.
constexpr size_t kMinAudioSamples = 400;  // 25 ms at 16 kHz (one n_fft window)

}  // namespace mf
