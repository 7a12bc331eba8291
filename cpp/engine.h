// The resident Music Flamingo engine: llama.cpp's text model + mtmd audio encoder, loaded once.
//
// Per track: the audio is encoded once, the shared prefix (chat head + audio) is evaluated once into one sequence,
// forked to N sequences in a unified KV cache (the prefix cells are shared, not copied), and the N prompts are
// decoded together, each with its own sampler chain and token limit. Several tracks decode in the same batch steps
// (continuous batching, cpp/batch_run.cpp); the next tracks' audio is encoded on a helper thread meanwhile.
//
// Plain C++ (no Python types): bindings.cpp adapts it. Errors are C++ exceptions of the types below; nothing here
// may abort the process on bad input.
#pragma once

#include "kv_layout.h"
#include "plan.h"
#include "types.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

struct llama_model;
struct llama_context;
struct llama_context_params;
struct mtmd_context;

namespace mf {

struct EngineResources;

class Engine {
public:
    explicit Engine(const EngineParams & params);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine & operator=(const Engine &) = delete;

    // track.pcm: mono float32 at sample_rate() Hz. Thread-safe: concurrent callers are serialized. A failure is
    // thrown as the exception the track failed with.
    GenerateResult generate(const TrackRequest & track, const RunRequest & request,
                            const InterruptCheck & interrupted = nullptr);

    // Several tracks with continuous batching: up to request.tracks_in_flight tracks (0: automatic) decode in the
    // same steps, and a finished track's sequences go to the next track. Results in the order of `tracks`; with
    // greedy decoding and flash attention off each equals generate() of that track alone. A track that cannot fit
    // the model is refused before anything runs; otherwise the first failing track's error is thrown after all
    // tracks ran.
    std::vector<GenerateResult> generate_many(const std::vector<TrackRequest> & tracks, const RunRequest & request,
                                              const InterruptCheck & interrupted = nullptr);

    // A stream: tracks come from `next`, each with `prompts`; results go to `done` as each track finishes. A track
    // that fails alone (too short, too long, out of memory) reaches `done` with its exception and the others go on.
    // The context is sized for request.max_audio_seconds (0: 10 minutes).
    RunStats run_stream(const NextTrack & next, const TrackDone & done, const std::vector<PromptRequest> & prompts,
                        const RunRequest & request, const InterruptCheck & interrupted = nullptr);

    // Whether a track of n_samples with `prompts` can run under `request` (the model's trained context, its
    // sequences): throws the InputError the run would give it, before any audio is encoded or memory allocated.
    void check(const std::vector<PromptRequest> & prompts, size_t n_samples, const RunRequest & request) const;

    int sample_rate() const;
    int n_ctx_train() const;
    double kv_cell_bytes() const;
    const RunStats & last_run_stats() const { return last_run_; }
    // Static facts about the loaded model: file names, architecture, template, devices used.
    std::map<std::string, std::string> info() const;

private:
    // How a run of `tracks` is sized (for a stream: its longest expected track; known_tracks 0) and whether each
    // known track fits the model: plan.h's rules with this engine's facts.
    RunPlan plan_run(const std::vector<TrackShape> & tracks, size_t known_tracks, const RunRequest & request) const;
    RunStats run(const NextTrack & next, const TrackDone & done, const std::vector<TrackShape> & tracks,
                 size_t known_tracks, const RunRequest & request, const InterruptCheck & interrupted);
    void allocate(RunPlan & plan);  // the context for `plan`, fewer tracks in flight when memory is short
    double kv_budget_bytes() const;
    double free_memory_budget() const;
    void ensure_context(int n_ctx_needed, int n_seq, int n_batch_needed, int stream_cells, int per_stream);
    void size_streams(RunPlan & p) const;
    llama_context_params context_params(int n_ctx, int n_seq, int n_batch, int per_stream = 1) const;
    bool ensure_prefill_context(int n_cells);
    bool prefill_beside(const RunRequest & request) const;
    void ensure_mtmd();
    ChatPieces format_chat(const std::string & system_prompt) const;
    ChatPieces chat_for(const RunRequest & request) const;
    DeviceSampling device_sampling_for(const RunRequest & request) const;  // the run's mode, "auto" resolved
    std::string token_text(bool used, int32_t token) const;  // "" when unused or absent

    EngineParams params_;
    std::unique_ptr<EngineResources> res_;  // cpp/resources.h
    KvLayout layout_ = KvLayout::Unified;  // params_.kv_layout
    int ctx_n_ctx_ = 0, ctx_n_seq_ = 0, ctx_n_batch_ = 0, ctx_per_stream_ = 1;
    int prefill_n_ctx_ = 0, prefill_n_batch_ = 0;
    std::string chat_template_;  // as stored in the GGUF ("chatml" when absent)
    std::string text_device_, audio_device_;
    bool text_on_gpu_ = false;
    RunStats last_run_;
    mutable std::mutex mutex_;
};

// Facts about the build and the machine: llama.cpp commit, compiled backends, devices.
std::map<std::string, std::string> build_info();
std::vector<std::map<std::string, std::string>> list_devices();

}  // namespace mf
