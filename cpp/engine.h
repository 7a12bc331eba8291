// The resident Music Flamingo engine: llama.cpp's text model + mtmd audio encoder, loaded once.
//
// One call = one track: the audio is encoded once, the shared prefix (chat head + audio) is evaluated once into
// sequence 0, forked to N sequences in a unified KV cache (the prefix cells are shared, not copied), and the N
// prompts are decoded together, one batch per step, each with its own sampler chain and token limit.
//
// Plain C++ (no Python types): bindings.cpp adapts it. Errors are C++ exceptions of the types below; nothing here
// may abort the process on bad input.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

struct llama_model;
struct llama_context;
struct mtmd_context;

namespace mf {

class AudioWindowEncoder;

// A model/mmproj file that is missing, unreadable, not a GGUF, or the wrong kind of GGUF.
struct ModelFileError : std::runtime_error { using std::runtime_error::runtime_error; };
// Audio or prompts the engine cannot take (empty, wrong format, non-finite, too long for the context).
struct InputError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
// llama.cpp failed while running (allocation, decode).
struct EngineError : std::runtime_error { using std::runtime_error::runtime_error; };
// The caller asked to stop (Ctrl-C) between two decode steps.
struct Interrupted : std::runtime_error { using std::runtime_error::runtime_error; };

struct EngineParams {
    std::string model_path;
    std::string mmproj_path;
    int n_gpu_layers = -1;       // -1: all layers
    bool mmproj_use_gpu = true;  // audio encoder on the first GPU when there is one
    int n_threads = 0;           // 0: half the logical CPUs (about the physical cores)
    int flash_attn = -1;         // -1 auto, 0 off, 1 on (both the text model and the audio encoder)
    int n_ctx = 0;               // 0: sized per call from the audio length and the prompts' limits (grows, never shrinks)
    int n_batch = 2048;          // logical batch; grown when the prompts of one call need more
    int n_ubatch = 1024;         // physical batch; >= 750 so one 30 s audio window is not split (the compute
                                 // buffer holds n_ubatch rows of logits: 2048 would cost 1.2 GB for Qwen's vocabulary)
    int n_seq_max = 8;           // sequences the context is made for; grown when a call has more prompts
    std::string kv_type = "f16"; // KV cache element type: f16, f32 (exact comparisons), q8_0 (half the memory)
    bool warmup = true;          // mtmd encodes one dummy window at load (finds unsupported GPU ops early)
};

struct SamplingParams {
    float temperature = 0.0f;    // <= 0: greedy
    float top_p = 1.0f;
    int top_k = 0;               // 0: off
    float min_p = 0.0f;
    float repeat_penalty = 1.0f; // 1: off
    int repeat_last_n = 64;
    uint32_t seed = 0;
};

struct PromptRequest {
    std::string text;            // the user's question, tokenized as plain text (no special tokens honoured)
    int max_tokens = 256;
    SamplingParams sampling;
};

// How the audio is put in front of the LLM.
enum class Framing {
    // What llama-mtmd-cli does: one log-mel over the whole track, 30 s windows of 750 tokens each (the last one
    // padded, plus a silent one at exact multiples of 30 s), a literal "<sound>" token before the audio.
    Mtmd = 0,
    // The reference (NVIDIA's code, transformers): one log-mel per 30 s window, the last window's tokens trimmed to
    // its real length, no literal "<sound>" token, "\n" after the audio. mtmd's encoder cannot mask the padding of
    // the last window, so its trimmed tokens still saw the padding.
    ReferenceTrim = 1,
    // As ReferenceTrim, but (for audio of 30 s or more) the last window is the final 30 s of real audio, so no
    // padding is encoded; only its tokens after the previous window are kept.
    ReferenceTail = 2,
    // The reference at every length: each window's log-mel (padded to 30 s, normalised per window, as the
    // reference's) is cut to its real frames and only those go through the encoder, so the encoder attends to what
    // the reference's mask leaves; the reference's token count per window (audio_window.h).
    Reference = 3,
};

// The chat around the audio and the user's text, rendered by the caller from the model's own chat template
// (python/music_flamingo/chat_template.py): head <audio> mid <user text> tail. head, mid and tail are tokenized with
// special tokens honoured, the user's text as plain text. Required by every framing but Mtmd, which formats the
// chat as llama-mtmd-cli does (llama.cpp's built-in template, no default system message).
struct ChatPieces {
    std::string head, mid, tail;
};

struct PromptOutput {
    std::string text;            // raw UTF-8 bytes (the caller decodes; a cut at max_tokens may split a character)
    std::vector<int32_t> tokens;
    std::string stop_reason;     // "eog" or "max_tokens"
};

struct GenerateStats {
    double audio_seconds = 0;
    int audio_chunks = 0;        // 30 s windows as mtmd frames them
    int audio_tokens = 0;
    int prefix_tokens = 0;       // shared prefix positions (chat head + audio)
    int prompt_tokens = 0;       // sum over prompts of the per-prompt suffix
    int n_ctx = 0;
    double encode_ms = 0;        // audio encoder
    double prefill_ms = 0;       // prefix text + audio embeddings + prompt suffixes through the LLM
    double decode_ms = 0;        // generation loop
    int tokens_generated = 0;
    double decode_tokens_per_s = 0;
    double total_ms = 0;
};

struct GenerateResult {
    std::vector<PromptOutput> outputs;
    GenerateStats stats;
    // Only with `debug`: the audio embeddings as fed to the LLM (audio_tokens x n_embd) and the logits of the
    // first generated position of prompt 0 (n_vocab). For fidelity measurements against transformers.
    std::vector<float> audio_embd;
    std::vector<float> first_logits;
    // Only with `debug`: the token ids of prompt 0 as fed (chat head, -1 per audio position, separator, question,
    // tail), to compare with the reference processor's.
    std::vector<int32_t> prompt_tokens;
};

// One track of a generate_many() call.
struct TrackRequest {
    std::vector<float> pcm;
    std::vector<PromptRequest> prompts;
};

// Called between decode steps; returns true to stop (used for Ctrl-C from Python).
using InterruptCheck = std::function<bool()>;

class Engine {
public:
    explicit Engine(const EngineParams & params);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine & operator=(const Engine &) = delete;

    // pcm: mono float32 at sample_rate() Hz. Thread-safe: concurrent callers are serialized.
    // render_special: keep the text of special tokens in the output (as llama-mtmd-cli prints them).
    // chat: the rendered template pieces (see ChatPieces); system_prompt only serves the Mtmd framing.
    GenerateResult generate(const std::vector<float> & pcm, const std::vector<PromptRequest> & prompts,
                            const std::string & system_prompt, bool render_special = false,
                            Framing framing = Framing::Mtmd, bool debug = false,
                            const InterruptCheck & interrupted = nullptr,
                            const std::optional<ChatPieces> & chat = std::nullopt);

    // Several tracks with continuous batching: up to max_in_flight tracks decode in the same steps, and a finished
    // track's sequences go to the next track. Results in the order of `tracks`; with greedy decoding and flash
    // attention off each equals generate() of that track alone.
    std::vector<GenerateResult> generate_many(const std::vector<TrackRequest> & tracks, const std::string & system_prompt,
                                              bool render_special, Framing framing, int max_in_flight,
                                              bool debug = false, const InterruptCheck & interrupted = nullptr,
                                              const std::optional<ChatPieces> & chat = std::nullopt);

    int sample_rate() const;
    int n_ctx_train() const;
    // Static facts about the loaded model: file names, architecture, template, devices used.
    std::map<std::string, std::string> info() const;

private:
    struct Window;  // one audio window of the reference framing
    struct Prefix;  // a track's planned prefix
    ChatPieces format_chat(const std::string & system_prompt) const;
    Prefix plan_prefix(const std::vector<float> & pcm, const ChatPieces & fp, Framing framing, GenerateStats & st) const;
    int32_t eval_prefix(Prefix & px, const std::vector<float> & pcm, int32_t seq, GenerateStats & st,
                        std::vector<float> * embd_out, const InterruptCheck & interrupted);  // returns llama_pos
    std::vector<float> encode_window(const float * pcm, size_t n, bool real_frames_only, double & encode_ms);
    void decode_embd(const float * embd, int n_tokens, int32_t seq, int32_t & n_past);  // seq: llama_seq_id, n_past: llama_pos
    void decode_tokens(const std::vector<int32_t> & toks, int32_t seq, int32_t & n_past);
    void ensure_context(int n_ctx_needed, int n_seq, int n_batch_needed);
    void ensure_mtmd();
    std::vector<int32_t> tokenize(const std::string & text, bool parse_special) const;
    std::string token_text(bool used, int32_t token) const;  // "" when unused or absent

    EngineParams params_;
    llama_model * model_ = nullptr;
    mtmd_context * mtmd_ = nullptr;               // the other framings' encoder, made on first use (ensure_mtmd)
    std::unique_ptr<AudioWindowEncoder> encoder_;  // Framing::Reference
    llama_context * ctx_ = nullptr;
    int ctx_n_ctx_ = 0, ctx_n_seq_ = 0, ctx_n_batch_ = 0;
    std::string chat_template_;  // as stored in the GGUF ("chatml" when absent)
    std::string text_device_, audio_device_;
    mutable std::mutex mutex_;
};

// Facts about the build and the machine: llama.cpp commit, compiled backends, devices.
std::map<std::string, std::string> build_info();
std::vector<std::map<std::string, std::string>> list_devices();

}  // namespace mf
