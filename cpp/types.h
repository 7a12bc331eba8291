// The engine's vocabulary: the settings, requests and results every part of cpp/ and the binding share. Plain
// structs only (no llama.cpp types), so any file may include this without pulling in the engine.
#pragma once

#include "errors.h"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mf {

// The audio the engine takes: mono float32 at 16 kHz, framed in 30 s windows of 750 tokens (3000 mel frames, the
// stride-2 conv and the stride-2 pool): AF3's audio encoder, as trained.
constexpr int kSampleRate = 16000;
constexpr int kWindowSeconds = 30;
constexpr size_t kWindowSamples = (size_t) kWindowSeconds * kSampleRate;
constexpr int kWindowTokens = 750;

// Flash attention for both the text model and the audio encoder (llama.cpp's and clip's own enums, one setting).
enum class FlashAttn { Auto = -1, Off = 0, On = 1 };

// Where a sequence's token is sampled (EngineParams::sampling_on_device, cpp/device_sampling.h). Auto: as On where
// the output layer is on a GPU, else Off (on a CPU the host fast path's one scan of the row beats ggml's top-k
// sort of all n_vocab indices); On: on the device for every prompt whose settings it reproduces (the others on
// the host), CPU backend included (how tests compare both paths); Off: the host fast path always.
enum class DeviceSampling { Auto, On, Off };

struct EngineParams {
    std::string model_path;
    std::string mmproj_path;
    int n_gpu_layers = -1;       // -1: all layers
    bool mmproj_use_gpu = true;  // audio encoder on the first GPU when there is one
    int n_threads = 0;           // 0: half the logical CPUs (about the physical cores)
    FlashAttn flash_attn = FlashAttn::Auto;
    int n_ctx = 0;               // 0: sized per call from the audio length and the prompts' limits (grows, never shrinks)
    int n_batch = 2048;          // logical batch; grown when the prompts of one call need more
    int n_ubatch = 1024;         // physical batch; >= 750 so one 30 s audio window is not split (the compute
                                 // buffer holds n_ubatch rows of activations)
    int n_seq_max = 8;           // sequences the context is made for; grown when a call has more prompts
    std::string kv_type = "f16"; // KV cache element type: f16, f32 (exact comparisons), q8_0 (half the memory)
    bool warmup = true;          // mtmd encodes one dummy window at load (finds unsupported GPU ops early)
    int n_sampling_threads = 0;  // threads that sample the rows of a step; 0: up to 4, a quarter of the CPUs
    double memory_budget_mb = 0; // KV cache budget for automatic sizing; 0: from the device's free memory
    bool prepare_ahead = true;   // encode the next tracks' audio on a helper thread while others decode
    // How the KV cache holds the sequences (cpp/kv_layout.h): "unified" (one cache: a track's prompts share its
    // prefix cells, every query's attention reads every track's cells, masked), "per_track" (one stream per track:
    // the prompts share the prefix cells and attend only to their track's; llama.cpp patch 0003) or
    // "per_sequence" (one stream per sequence: each fork copies the prefix). bench/RESULTS.md measures them.
    std::string kv_layout = "unified";
    // Sampling on the device (llama.cpp's backend samplers, cpp/device_sampling.h): "auto" (where the output layer
    // is on a GPU), "on" (also on a CPU), "off" (the host fast path, cpp/sampling.h); under "auto" and "on" a
    // prompt whose settings the device does not reproduce samples on the host.
    std::string sampling_on_device = "auto";
    // Evaluate each track's prefix in a second, small context on a prefill thread, beside the decode steps, and
    // hand its cells to the main context (cpp/prefill_context.h), so admitting a track no longer stops the others.
    // Unset: on when the text model is on a GPU (there the two contexts run at once; on a CPU they share the same
    // cores, so nothing is gained). Needs the unified layout and prepare_ahead; otherwise, or out of memory:
    // prefilled at admission.
    std::optional<bool> prefill_beside;
};

// A new sampling setting: a field here (and its use in sampling.cpp), one Field line in bindings.cpp (bind_types)
// and a field of the Python Prompt (datatypes.py, checked in validation.py); tests/test_core_stub.py fails until
// _core.pyi has it too.
struct SamplingParams {
    float temperature = 0.0f;    // <= 0: greedy
    float top_p = 1.0f;
    int top_k = 0;               // 0: off
    float min_p = 0.0f;
    float repeat_penalty = 1.0f; // 1: off
    int repeat_last_n = 64;      // tokens the repeat penalty looks back over; 0..kMaxRepeatLastN
    uint32_t seed = 0;
    bool ignore_eos = false;     // never sample end-of-generation tokens: every answer runs to max_tokens (benchmarks)
};

// llama.cpp's penalty sampler keeps a ring buffer of repeat_last_n tokens per sequence: a bound keeps a huge value
// from allocating gigabytes. Longer than any answer the model's context allows. (validation.py: REPEAT_LAST_N_MAX)
constexpr int kMaxRepeatLastN = 65536;

// The one default answer length; Python's Prompt reads it from here (tests/test_core_stub.py compares them).
constexpr int kDefaultMaxTokens = 256;

// A question asked after a prompt's answer, in the same conversation (the pipeline's short summaries). The
// sequence holding the audio, the question and the answer is continued, not recomputed: the end of the answer's
// turn, this text and the start of a new assistant turn are appended to a copy of it (cpp/followup.cpp).
struct FollowUpRequest {
    std::string text;            // tokenized as plain text, as a prompt's
    int max_tokens = 64;
    SamplingParams sampling;
};

struct PromptRequest {
    std::string text;            // the user's question, tokenized as plain text (no special tokens honoured)
    int max_tokens = kDefaultMaxTokens;
    SamplingParams sampling;
    std::vector<FollowUpRequest> followups;  // asked after this prompt's answer, each in its own sequence
    // A known answer (the catch-up case: a sidecar that already holds it): fed as the assistant's turn instead of
    // generated, so only the follow-ups are. answer_tokens when given (exact: a PromptOutput's tokens), else
    // answer tokenized as plain text. A track whose prompts are all answered may have no audio (text only).
    bool answered = false;
    std::string answer;
    std::vector<int32_t> answer_tokens;
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

struct PromptOutput {
    std::string text;            // raw UTF-8 bytes (the caller decodes; a cut at max_tokens may split a character)
    std::vector<int32_t> tokens;
    std::string stop_reason;     // "eog", "max_tokens", or "answer" (a known answer, fed not generated)
    std::vector<PromptOutput> followups;  // one per PromptRequest::followups, in order
};

struct GenerateStats {
    double audio_seconds = 0;
    int audio_chunks = 0;        // 30 s windows as the framing cuts them
    int audio_tokens = 0;
    int prefix_tokens = 0;       // shared prefix positions (chat head + audio)
    int prompt_tokens = 0;       // sum over prompts of the per-prompt suffix
    int n_ctx = 0;
    double mel_ms = 0;           // log-mel of the audio (helper thread with prepare_ahead)
    double encode_ms = 0;        // audio encoder (helper thread with prepare_ahead)
    // The decode thread's prefill of this track (it stops the other tracks meanwhile): the prompt suffixes and,
    // unless the prefix was prefilled beside (RunStats::prefill_beside), the prefix too; with it, installing the
    // prefix's cells instead (the prefill thread's time for them is RunStats::prefill_beside_ms).
    double prefill_ms = 0;
    double decode_ms = 0;        // from the first generated token to the last
    int tokens_generated = 0;
    double decode_tokens_per_s = 0;
    double total_ms = 0;         // from admission (after the audio was encoded) to the last token
};

struct GenerateResult {
    std::vector<PromptOutput> outputs;
    GenerateStats stats;
    // Set when this track failed alone (Engine::run): the exception itself (InputError, EngineError, ...), handed on
    // as thrown; bindings.cpp translates it to Python once, with every other exception.
    std::exception_ptr error;
    // Only with `debug`: the audio embeddings as fed to the LLM (audio_tokens x n_embd) and the logits of the
    // first generated position of prompt 0 (n_vocab). For fidelity measurements against transformers.
    std::vector<float> audio_embd;
    std::vector<float> first_logits;
    // Only with `debug`: the token ids of prompt 0 as fed (chat head, -1 per audio position, mid, question, tail),
    // to compare with the reference processor's.
    std::vector<int32_t> prompt_tokens;
};

// The chat around the audio and the user's text: head <audio> mid <user text> tail. head, mid and tail are
// tokenized with special tokens honoured, the user's text as plain text. For every framing but Mtmd the caller
// renders them from the model's own chat template (python/music_flamingo/chat_template.py, as transformers does,
// default system message included; mid = "\n"); Mtmd formats the chat as llama-mtmd-cli does (llama.cpp's
// built-in template, no default system message; for ChatML head = "<|im_start|>user\n", mid = "",
// tail = "<|im_end|>\n<|im_start|>assistant\n").
// next_turn: what the template puts between an assistant's answer and the next user text (ChatML:
// "<|im_end|>\n<|im_start|>user\n"); a follow-up is next_turn <text> tail. Empty: follow-ups are refused.
struct ChatPieces {
    std::string head, mid, tail;
    std::string next_turn;
};

// One track of a generate_many() call. pcm may be empty when every prompt is answered (a text-only track).
struct TrackRequest {
    std::vector<float> pcm;
    std::vector<PromptRequest> prompts;
};

// Called between decode steps; returns true to stop (used for Ctrl-C from Python).
using InterruptCheck = std::function<bool()>;
// Engine::run's source: fills the next track and returns true, or returns false when there is none left.
// Called from the helper thread that encodes audio (or the caller's thread without prepare_ahead).
using NextTrack = std::function<bool(TrackRequest &)>;
// Engine::run's sink: the result of the index-th track taken from the source. Called on the caller's thread.
using TrackDone = std::function<void(size_t, GenerateResult &&)>;

// One run's settings as the caller gives them: bound to Python field by field as _core.RunRequest (bindings.cpp),
// its defaults read from here. A new setting: a field here, one Field line in bindings.cpp, and _core.pyi. A setting
// with a range is checked once, where Python sets it (its rule in bindings.cpp); C++ callers keep to the same range.
struct RunRequest {
    std::string system_prompt;           // Mtmd framing only: the others take `chat`
    std::optional<ChatPieces> chat;      // rendered template pieces; required by every framing but Mtmd
    bool render_special = false;         // keep the text of special tokens in the output (as llama-mtmd-cli prints)
    Framing framing = Framing::Mtmd;
    int tracks_in_flight = 0;            // 0: automatic (from free memory, capped where attention outgrows the gain)
    double max_audio_seconds = 0;        // a stream: the longest track expected (sizes the context); 0: 10 minutes
    bool profile = false;                // record every decode step (RunStats::step_*)
    std::optional<bool> prepare_ahead;   // encode on a helper thread; unset: the engine's setting
    std::optional<bool> prefill_beside;  // prefix in a second context (EngineParams); unset: the engine's setting
    // Admission by live answers: past tracks_in_flight (up to twice as many tracks) while fewer answers than this
    // are live, so the step's batch stays full as answers end at different lengths. The context is sized for
    // the extra tracks' sequences and cells (within the memory budget when automatic). 0: off (tracks only).
    int live_answers = 0;
    bool debug = false;                  // audio embeddings and first logits of the first track (samples on the host)
    std::optional<std::string> sampling_on_device;  // "auto", "on", "off"; unset: the engine's setting
};

// The most tracks in flight one run may ask for: llama.cpp allows at most 256 sequences in one context
// (LLAMA_MAX_SEQ, src/llama-cparams.h: not public) and each track needs one at least.
constexpr int kMaxSequences = 256;


// What one run did, for benchmarks: where the time went between and inside decode steps.
struct RunStats {
    int tracks = 0;
    int tracks_failed = 0;
    int tracks_in_flight = 0;        // the limit used (chosen automatically or given)
    int peak_in_flight = 0;
    int n_ctx = 0;
    int n_seq = 0;
    double kv_budget_mb = 0;         // memory the automatic sizing allowed the KV cache (0: not used)
    int steps = 0;
    long step_tokens = 0;            // sum over steps of the sequences decoded
    double decode_ms = 0;            // inside llama_decode (+ synchronize) for the steps
    double sample_ms = 0;            // sampling the rows of the steps
    double host_ms = 0;              // all per-step work outside llama_decode (sampling, batch, bookkeeping)
    double admit_ms = 0;             // prefill of admitted tracks on the decode thread
    int prefill_beside = 0;          // tracks whose prefix was evaluated in the second context
    double prefill_beside_ms = 0;    // their prefixes there (prefill thread, beside the steps), copy out included
    int prefill_fallbacks = 0;       // tracks meant to be prefilled beside that the decode thread prefilled
    int live_answers = 0;            // the live-answers target used (0: off)
    double wait_ms = 0;              // decode thread waiting for the helper threads' encoded (prefilled) tracks
    double prepare_ms = 0;           // mel + encoder of all tracks (helper thread with prepare_ahead)
    double wall_ms = 0;
    int sampling_threads = 1;
    long device_sampled = 0;         // rows whose token the device chose (cpp/device_sampling.h)
    int sampler_attaches = 0;        // chains attached to the context this run (each re-reserves its graphs)
    // with RunOptions::profile, one entry per step: live sequences, host ms before the step, decode ms
    std::vector<int> step_batch;
    std::vector<float> step_host_ms, step_decode_ms;
};

}  // namespace mf
