#include "engine.h"

#include "batch_run.h"
#include "ggml-backend.h"
#include "gguf_check.h"
#include "llama.h"
#include "mtmd.h"
#include "prefix.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <thread>

#ifndef MF_LLAMA_CPP_COMMIT
#define MF_LLAMA_CPP_COMMIT "unknown"
#endif
#ifndef MF_LLAMA_CPP_SOURCE
#define MF_LLAMA_CPP_SOURCE "unknown"
#endif

namespace mf {
namespace {

// Stands in for the user's text while the chat template is applied, so the formatted chat can be cut into
// template pieces (tokenized with special tokens) and the user's text (tokenized as plain text). Plain letters
// survive templates that trim or escape content.
constexpr const char * kPromptSlot = "MUSICFLAMINGOPROMPTSLOT";

// Automatic tracks in flight, at most. On a GPU a decode step is memory-bound, so more sequences per step are
// nearly free until attention over the unified KV cache (every query reads every track's cells) and the KQ mask
// llama.cpp builds on one CPU thread per step outgrow the gain (bench/RESULTS.md, GPU table). On a CPU a step is
// compute-bound and 2 in flight gained most (bench/in_flight.py).
constexpr int kAutoInFlightGpu = 12;
constexpr int kAutoInFlightCpu = 2;
// A stream sizes its context for this much audio per track unless told (RunRequest::max_audio_seconds).
constexpr double kStreamAudioSeconds = 600;
// llama.cpp pads a context to 256 cells; no run is sized smaller.
constexpr int kMinCells = 256;

int round_up(int n, int to) { return ((n + to - 1) / to) * to; }

std::string device_label(ggml_backend_dev_t dev) {
    if (!dev) return "CPU";
    return std::string(ggml_backend_dev_name(dev)) + " (" + ggml_backend_dev_description(dev) + ")";
}

ggml_backend_dev_t first_gpu() {
    ggml_backend_dev_t d = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    return d ? d : ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
}

ggml_type kv_ggml_type(const std::string & name) {
    if (name == "f16") return GGML_TYPE_F16;
    if (name == "f32") return GGML_TYPE_F32;
    if (name == "q8_0") return GGML_TYPE_Q8_0;
    throw InputError("kv cache type must be f16, f32 or q8_0 (got '" + name + "')");
}

llama_flash_attn_type fa_type(FlashAttn v) {
    switch (v) {
        case FlashAttn::Off: return LLAMA_FLASH_ATTN_TYPE_DISABLED;
        case FlashAttn::On: return LLAMA_FLASH_ATTN_TYPE_ENABLED;
        default: return LLAMA_FLASH_ATTN_TYPE_AUTO;
    }
}

// Settings that would make llama.cpp allocate absurdly (n_threads=10**6 was a std::bad_alloc) or misbehave: refused
// with their name before anything loads.
void require_in_range(const char * name, double v, double lo, double hi) {
    if (!(v >= lo && v <= hi)) {
        std::ostringstream got;  // as the caller wrote it: 100000, 1e+12, nan (not 100000.000000)
        got << v;
        throw InputError(std::string(name) + " must be in " + std::to_string((long long) lo) + ".." +
                         std::to_string((long long) hi) + " (got " + got.str() + ")");
    }
}

void validate(const EngineParams & p) {
    require_in_range("n_threads", p.n_threads, 0, GGML_MAX_N_THREADS);  // 0: automatic
    require_in_range("n_sampling_threads", p.n_sampling_threads, 0, GGML_MAX_N_THREADS);
    require_in_range("n_ubatch", p.n_ubatch, 1, 1 << 20);
    require_in_range("n_batch", p.n_batch, 0, 1 << 20);
    require_in_range("n_ctx", p.n_ctx, 0, 1 << 24);
    require_in_range("n_seq_max", p.n_seq_max, 0, kMaxSequences);
    require_in_range("memory_budget_mb", p.memory_budget_mb, 0, 1 << 30);
    kv_ggml_type(p.kv_type);
    parse_device_sampling(p.sampling_on_device);
    parse_kv_layout(p.kv_layout);
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

// The KV cells the `n` largest tracks need together (`cells` largest first; past the end, the last again).
int sum_largest(const std::vector<int> & cells, int n) {
    long s = 0;
    for (int i = 0; i < n && !cells.empty(); i++) s += cells[std::min((size_t) i, cells.size() - 1)];
    return (int) std::min<long>(s, 1L << 30);
}

}  // namespace

Engine::Engine(const EngineParams & params) : params_(params), res_(std::make_unique<EngineResources>()) {
    validate(params_);
    layout_ = parse_kv_layout(params_.kv_layout);
    if (params_.n_batch < params_.n_ubatch) params_.n_batch = params_.n_ubatch;
    // Default: half the logical CPUs, about the physical cores (llama.cpp's own default). ggml's thread pool spins
    // while it waits, so a thread per logical CPU fights the audio-decoding thread and anything else running:
    // measured on 2 cores with another process busy, 2 threads ran a decode step 25x slower than 1 (bench/RESULTS.md).
    const int n_cpu = (int) std::max(1u, std::thread::hardware_concurrency());
    if (params_.n_threads <= 0) params_.n_threads = std::max(1, n_cpu / 2);

    check_text_model_file(params_.model_path);
    check_mmproj_file(params_.mmproj_path);

    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params_.n_gpu_layers < 0 ? 999 : params_.n_gpu_layers;
    res_->model.reset(llama_model_load_from_file(params_.model_path.c_str(), mp));
    if (!res_->model) throw ModelFileError("llama.cpp could not load the model: " + params_.model_path + " (see the log)");
    llama_model * model = res_->model.get();

    // The audio encoder of the default framing; mtmd's own (a second copy) loads only when a framing that uses it
    // is asked for (ensure_mtmd).
    res_->encoder = std::make_unique<AudioWindowEncoder>(AudioWindowEncoder::Params{
        params_.mmproj_path, params_.mmproj_use_gpu, params_.flash_attn, params_.warmup});
    if (res_->encoder->n_embd() != llama_model_n_embd_inp(model)) {
        throw ModelFileError("the mmproj does not belong to this model (audio embeddings of " +
                             std::to_string(res_->encoder->n_embd()) + ", text model " +
                             std::to_string(llama_model_n_embd_inp(model)) + "): " + params_.mmproj_path);
    }

    const llama_vocab * vocab = llama_model_get_vocab(model);
    for (int32_t id = 0; id < llama_vocab_n_tokens(vocab); id++) {
        if (llama_vocab_is_eog(vocab, id)) res_->eog_ids.push_back(id);
    }
    // Sampling threads: a quarter of the CPUs, at most 4 (a step's rows are few and short; more threads only add
    // wake-up latency), at least 1.
    const int n_samp = params_.n_sampling_threads > 0 ? params_.n_sampling_threads : std::clamp(n_cpu / 4, 1, 4);
    if (n_samp > 1) res_->pool = std::make_unique<SamplerPool>(n_samp);

    const char * tmpl = llama_model_chat_template(model, nullptr);
    chat_template_ = tmpl ? tmpl : "chatml";

    const int n_layer = llama_model_n_layer(model);
    ggml_backend_dev_t gpu = first_gpu();
    const int offloaded = gpu ? std::min(mp.n_gpu_layers, n_layer + 1) : 0;
    text_on_gpu_ = offloaded > n_layer;  // every layer and the output: the KV cache lives on the GPU
    text_device_ = offloaded > 0 ? device_label(gpu) + ", " + std::to_string(offloaded) + "/" +
                                       std::to_string(n_layer + 1) + " layers"
                                 : "CPU";
    audio_device_ = (gpu && params_.mmproj_use_gpu) ? device_label(gpu) : "CPU";
}

Engine::~Engine() {
    std::lock_guard<std::mutex> lock(mutex_);
    res_.reset();  // context, then audio encoder, then model (Resources' members in reverse order)
}

int Engine::sample_rate() const { return res_->encoder->sample_rate(); }

// mtmd's audio path (Framing::Mtmd, ReferenceTrim, ReferenceTail) needs an mtmd context, which loads the mmproj's
// encoder a second time: made on first use, so an engine that only uses Framing::Reference holds one copy.
void Engine::ensure_mtmd() {
    if (res_->mtmd) return;
    mtmd_context_params cp = mtmd_context_params_default();
    cp.use_gpu = params_.mmproj_use_gpu;
    cp.print_timings = false;
    cp.n_threads = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.warmup = params_.warmup;
    res_->mtmd.reset(mtmd_init_from_file(params_.mmproj_path.c_str(), res_->model.get(), cp));
    if (!res_->mtmd || !mtmd_support_audio(res_->mtmd.get())) {
        res_->mtmd.reset();
        throw EngineError("mtmd could not load the mmproj: " + params_.mmproj_path + " (see the log)");
    }
}

std::string Engine::token_text(bool used, int32_t token) const {
    if (!used || token == LLAMA_TOKEN_NULL) return "";
    const char * t = llama_vocab_get_text(llama_model_get_vocab(res_->model.get()), token);
    return t ? t : "";
}

// The chat a run feeds: llama-mtmd-cli's formatting for the Mtmd framing, the caller's rendered template otherwise.
ChatPieces Engine::chat_for(const RunRequest & request) const {
    if (request.framing == Framing::Mtmd) return format_chat(request.system_prompt);
    if (!request.chat) throw InputError("this framing needs the chat rendered from the model's template (ChatPieces)");
    return *request.chat;
}

// The memory the KV cache may fill when no budget is given: the free memory of the device that holds it, less room
// for the compute buffers of the context (made after this) and of the encoder, plus what the current cache holds.
double Engine::free_memory_budget() const {
    size_t free = 0, total = 0;
    if (text_on_gpu_) {
        ggml_backend_dev_memory(first_gpu(), &free, &total);
        return 0.9 * (double) free - 1.5 * 1024.0 * 1024.0 * 1024.0 + (double) ctx_n_ctx_ * kv_cell_bytes();
    }
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu) ggml_backend_dev_memory(cpu, &free, &total);
    return 0.5 * (double) free;
}

// Bytes one KV cell takes: K and V of every layer's key/value heads.
double Engine::kv_cell_bytes() const {
    const llama_model * model = res_->model.get();
    const ggml_type t = kv_ggml_type(params_.kv_type);
    const double type_bytes = (double) ggml_type_size(t) / (double) ggml_blck_size(t);
    const double head_dim = (double) llama_model_n_embd(model) / std::max(1, llama_model_n_head(model));
    return 2.0 * llama_model_n_layer(model) * llama_model_n_head_kv(model) * head_dim * type_bytes;
}
int Engine::n_ctx_train() const { return llama_model_n_ctx_train(res_->model.get()); }

std::map<std::string, std::string> Engine::info() const {
    char desc[256];
    llama_model_desc(res_->model.get(), desc, sizeof desc);
    return {
        {"model_path", params_.model_path},
        {"mmproj_path", params_.mmproj_path},
        {"model_desc", desc},
        {"n_ctx_train", std::to_string(n_ctx_train())},
        {"n_embd", std::to_string(llama_model_n_embd(res_->model.get()))},
        {"n_layer", std::to_string(llama_model_n_layer(res_->model.get()))},
        {"chat_template", chat_template_},
        // for rendering the template as transformers does (it passes the tokenizer's special tokens)
        {"bos_token", token_text(llama_vocab_get_add_bos(llama_model_get_vocab(res_->model.get())),
                                 llama_vocab_bos(llama_model_get_vocab(res_->model.get())))},
        {"eos_token", token_text(true, llama_vocab_eos(llama_model_get_vocab(res_->model.get())))},
        {"sample_rate", std::to_string(sample_rate())},
        {"text_model_device", text_device_},
        {"audio_encoder_device", audio_device_},
        {"n_threads", std::to_string(params_.n_threads)},
        {"sampling_threads", std::to_string(res_->pool ? res_->pool->threads() : 1)},
        {"auto_tracks_in_flight_cap", std::to_string(text_on_gpu_ ? kAutoInFlightGpu : kAutoInFlightCpu)},
        {"flash_attn", params_.flash_attn == FlashAttn::Auto ? "auto" : params_.flash_attn == FlashAttn::On ? "on" : "off"},
        {"n_ctx", std::to_string(ctx_n_ctx_)},
        {"kv_type", params_.kv_type},
        // what the engine's setting means here ("auto" resolved): the bench's engine_info records it
        {"sampling_on_device", device_sampling_for(RunRequest{}) == DeviceSampling::On ? "on" : "off"},
        {"kv_layout", kv_layout_name(layout_)},
        {"kv_cell_bytes", std::to_string((long) kv_cell_bytes())},
        {"prefill_beside", prefill_beside(RunRequest{}) ? "on" : "off"},  // the engine's setting (a run may override)
    };
}

// The chat formatted by the model's template, cut at the media marker and the prompt slot (see ChatPieces).
ChatPieces Engine::format_chat(const std::string & system_prompt) const {
    const std::string marker = mtmd_default_marker();
    std::vector<llama_chat_message> msgs;
    if (!system_prompt.empty()) msgs.push_back({"system", system_prompt.c_str()});
    const std::string user = marker + kPromptSlot;
    msgs.push_back({"user", user.c_str()});
    std::string formatted(4096 + system_prompt.size(), '\0');
    auto apply = [&](const char * tmpl) {
        int n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, formatted.data(), (int32_t) formatted.size());
        if (n > (int) formatted.size()) {
            formatted.resize((size_t) n);
            n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, formatted.data(), (int32_t) formatted.size());
        }
        return n;
    };
    int n_fmt = apply(chat_template_.c_str());
    if (n_fmt < 0) n_fmt = apply("chatml");  // a template llama.cpp does not know: fall back to ChatML
    if (n_fmt < 0) throw EngineError("could not apply the chat template");
    formatted.resize((size_t) n_fmt);
    const size_t at_marker = formatted.find(marker);
    const size_t at_slot = formatted.find(kPromptSlot);
    if (at_marker == std::string::npos || at_slot == std::string::npos || at_slot < at_marker) {
        throw EngineError("the chat template dropped the audio marker or the prompt");
    }
    return {formatted.substr(0, at_marker), formatted.substr(at_marker + marker.size(), at_slot - at_marker - marker.size()),
            formatted.substr(at_slot + std::string(kPromptSlot).size())};
}

// One context's settings. The main context and the prefill context share all but their size: the same K/V types,
// flash attention, unified setting and batch split, so a prefix's cells mean the same in both (prefill_context.h).
llama_context_params Engine::context_params(int n_ctx, int n_seq, int n_batch, int per_stream) const {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) std::min(params_.n_ubatch, n_batch);
    cp.n_seq_max = (uint32_t) n_seq;
    // A decode outputs at most one row per sequence (a step: one per live sequence; a track's prompts: one each).
    // Left at 0 llama.cpp reserves n_batch rows of logits in the compute buffer (~1.2 GB for Qwen's vocabulary).
    cp.n_outputs_max = (uint32_t) n_seq;
    // The same bound for device sampling: one sampled row per sequence and decode keeps each sampler chain's graph
    // one row wide and its seeded draw plain (no per-decode transaction to commit).
    cp.n_outputs_max_per_seq = 1;
    cp.kv_unified = layout_ == KvLayout::Unified;  // the forks share the prefix cells (per_track: inside a stream)
    cp.n_seq_per_stream = (uint32_t) per_stream;   // patch 0003
    cp.n_threads = params_.n_threads;
    cp.n_threads_batch = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.type_k = cp.type_v = kv_ggml_type(params_.kv_type);
    cp.no_perf = true;
    return cp;
}

// The prefill context for prefixes of up to n_cells positions, one sequence, the main context's batch (made after
// it). Grows only. False when llama.cpp cannot make it (out of memory): the run prefills at admission instead.
bool Engine::ensure_prefill_context(int n_cells) {
    n_cells = round_up(std::max(n_cells, kMinCells), kMinCells);
    if (res_->prefill_ctx && n_cells <= prefill_n_ctx_ && prefill_n_batch_ == ctx_n_batch_) return true;
    res_->prefill_ctx.reset();
    prefill_n_ctx_ = prefill_n_batch_ = 0;
    res_->prefill_ctx.reset(llama_init_from_model(res_->model.get(), context_params(n_cells, 1, ctx_n_batch_)));
    if (!res_->prefill_ctx) return false;
    prefill_n_ctx_ = n_cells;
    prefill_n_batch_ = ctx_n_batch_;
    return true;
}

// Whether a run prefills beside its steps: asked for (or, unset, the text model on a GPU), with a helper thread to
// do it on and one KV cache shared by all sequences (a stream per sequence would need as many in the second
// context for llama.cpp to take its cells).
bool Engine::prefill_beside(const RunRequest & request) const {
    const bool wanted = request.prefill_beside.value_or(params_.prefill_beside.value_or(text_on_gpu_));
    return wanted && layout_ == KvLayout::Unified && request.prepare_ahead.value_or(params_.prepare_ahead);
}

// (Re)creates the llama context when a run needs more cells, sequences or batch than the current one has.
// Grows only, rounded up, so a long run settles on one context instead of reallocating per call. Without a unified
// cache the context is streams of stream_cells cells, each holding per_stream sequences (kv_layout.h).
void Engine::ensure_context(int n_ctx_needed, int n_seq, int n_batch_needed, int stream_cells, int per_stream) {
    int n_ctx = params_.n_ctx > 0 ? params_.n_ctx : n_ctx_needed;
    const bool same_streams = res_->ctx && per_stream == ctx_per_stream_;  // a per_track context fits one track shape
    const int ctx_seq = same_streams ? ctx_n_seq_ : 0;
    const int n_seq_min = layout_ == KvLayout::PerTrack ? 0 : params_.n_seq_max;  // per_track: streams are tracks
    n_seq = round_up(std::max({n_seq, n_seq_min, ctx_seq}), per_stream);
    n_seq = std::min(kMaxSequences / per_stream * per_stream, n_seq);
    const int n_batch = std::max({params_.n_batch, n_batch_needed, ctx_n_batch_});
    if (layout_ != KvLayout::Unified) {
        // size the streams, not the total
        const int ctx_cells = ctx_seq ? ctx_n_ctx_ / (ctx_seq / per_stream) : 0;
        stream_cells = round_up(std::max({stream_cells, kMinCells, ctx_cells}), kMinCells);
        if (same_streams && n_seq <= ctx_n_seq_ && stream_cells <= ctx_cells && n_batch <= ctx_n_batch_) return;
        n_ctx = stream_cells * (n_seq / per_stream);
    } else if (res_->ctx && n_ctx <= ctx_n_ctx_ && n_seq <= ctx_n_seq_ && n_batch <= ctx_n_batch_) {
        return;
    } else if (params_.n_ctx <= 0) {
        n_ctx = std::max(round_up(n_ctx, kMinCells), ctx_n_ctx_);
    }

    res_->ctx.reset();
    res_->device.forget();  // its chains were attached to the context just freed
    ctx_n_ctx_ = ctx_n_seq_ = ctx_n_batch_ = 0;
    res_->ctx.reset(llama_init_from_model(res_->model.get(), context_params(n_ctx, n_seq, n_batch, per_stream)));
    if (!res_->ctx) {
        throw EngineError("llama.cpp could not create a context of " + std::to_string(n_ctx) +
                          " tokens (out of memory? see the log)");
    }
    ctx_n_ctx_ = n_ctx; ctx_n_seq_ = n_seq; ctx_n_batch_ = n_batch; ctx_per_stream_ = per_stream;
}

double Engine::kv_budget_bytes() const {
    return params_.memory_budget_mb > 0 ? params_.memory_budget_mb * 1024.0 * 1024.0 : free_memory_budget();
}

// Tracks in flight and context size for a run. The tracks' sizing cells (largest first) are what each known track,
// or a stream's longest expected track, can need. Automatic sizing fills at most the memory budget (free device
// memory after the model, less room for compute buffers) up to the cap; the KV cells actually free decide
// admissions inside the run, so short tracks fill the same context more densely than long ones.
RunPlan Engine::plan_run(const std::vector<TrackShape> & tracks, size_t known_tracks, const RunRequest & request) const {
    RunPlan p;
    std::vector<int> cells;
    int seq_cells = 0, prefix_cells = 0;
    for (const auto & t : tracks) {
        prefix_cells = std::max(prefix_cells, std::min(t.prefix_bound, n_ctx_train()));
        if (known_tracks > 0) require_fits(t, RunLimits{n_ctx_train()});
        p.max_prompts = std::max(p.max_prompts, t.sequences);  // sequences per track: prompts and follow-ups
        p.n_batch = std::max(p.n_batch, t.suffix_tokens());  // all prompts of a track in one batch
        cells.push_back(t.sizing_cells(n_ctx_train()));
        seq_cells = std::max(seq_cells, t.sizing_seq_cells(n_ctx_train()));
    }
    std::sort(cells.rbegin(), cells.rend());
    const bool automatic = request.tracks_in_flight == 0;
    const double budget = automatic ? kv_budget_bytes() : 0.0;
    p.kv_budget_mb = mib(budget);
    int n = automatic ? (text_on_gpu_ ? kAutoInFlightGpu : kAutoInFlightCpu) : request.tracks_in_flight;
    if (layout_ == KvLayout::PerSequence) {
        // a stream per sequence, each big enough for the longest sequence
        p.seq_cells = std::max(seq_cells, kMinCells);
        if (automatic) n = std::max(1, std::min(n, (int) (budget / (p.seq_cells * p.max_prompts * kv_cell_bytes()))));
    } else if (layout_ == KvLayout::PerTrack) {
        // a stream per track, each big enough for the largest track and a step's pad tokens
        p.seqs_per_stream = track_stream_seqs(p.max_prompts);
        p.seq_cells = std::max(cells.empty() ? 0 : cells[0] + p.seqs_per_stream - 1, kMinCells);
        if (automatic) n = std::max(1, std::min(n, (int) (budget / (p.seq_cells * kv_cell_bytes()))));
    }
    if (known_tracks > 0) n = std::min<int>(n, (int) known_tracks);
    const int seqs_per_track = layout_ == KvLayout::PerTrack ? p.seqs_per_stream : p.max_prompts;
    p.tracks_in_flight = std::min(n, std::max(1, kMaxSequences / seqs_per_track));
    p.max_tracks = p.tracks_in_flight;
    if (layout_ != KvLayout::Unified) {  // streams: more tracks would be more streams (memory), not denser ones
        size_streams(p);
        return p;
    }
    p.max_tracks = max_tracks(p.tracks_in_flight, request.live_answers, p.max_prompts);
    if (known_tracks > 0) p.max_tracks = std::min<int>(p.max_tracks, (int) known_tracks);
    size_streams(p);
    p.n_ctx = sum_largest(cells, p.max_tracks);
    // one known track has no steps to prefill beside: the handover would only add its copy
    if (prefill_beside(request) && known_tracks != 1) {
        p.prefill_cells = round_up(std::max(prefix_cells, kMinCells), kMinCells);
    }
    if (automatic) {
        double budget_cells = std::clamp(budget / kv_cell_bytes(), 0.0, (double) (1 << 30));
        // the prefill context's cells come out of the same budget; when the rest could not hold the largest
        // track, the run prefills at admission instead
        if (p.prefill_cells > 0 && budget_cells - p.prefill_cells >= (cells.empty() ? 0 : cells[0])) {
            budget_cells -= p.prefill_cells;
        } else {
            p.prefill_cells = 0;
        }
        // cells are upper bounds (a silent window more than any track has): tracks usually fit more densely
        p.n_ctx = std::min(p.n_ctx, (int) budget_cells);
    }
    p.n_ctx = std::max(p.n_ctx, kMinCells);
    return p;
}

// A plan's sequences and, without a unified cache, its cells, from its tracks in flight.
void Engine::size_streams(RunPlan & p) const {
    const bool per_track = layout_ == KvLayout::PerTrack;
    p.n_seq = p.max_tracks * (per_track ? p.seqs_per_stream : p.max_prompts);
    if (layout_ != KvLayout::Unified) p.n_ctx = (per_track ? p.max_tracks : p.n_seq) * p.seq_cells;
}

// The context for a plan. Out of memory: fewer tracks in flight, down to one.
void Engine::allocate(RunPlan & p) {
    for (;;) {
        try {
            ensure_context(p.n_ctx, p.n_seq, p.n_batch, p.seq_cells, p.seqs_per_stream);
            return;
        } catch (const EngineError &) {
            if (p.tracks_in_flight <= 1) throw;
            p.tracks_in_flight = std::max(1, p.tracks_in_flight / 2);
            p.max_tracks = std::max(p.tracks_in_flight, p.max_tracks / 2);
            p.n_ctx = std::max(kMinCells, p.n_ctx / 2);
            size_streams(p);
        }
    }
}

RunStats Engine::run(const NextTrack & next, const TrackDone & done, const std::vector<TrackShape> & tracks,
                     size_t known_tracks, const RunRequest & request, const InterruptCheck & interrupted) {
    const ChatPieces chat = chat_for(request);
    RunPlan plan = plan_run(tracks, known_tracks, request);
    if (request.framing != Framing::Reference) ensure_mtmd();
    allocate(plan);
    // after the main context, which must exist first: a prefill context it cannot afford is simply not used
    std::unique_ptr<SidePrefill> side;
    if (plan.prefill_cells > 0 && ensure_prefill_context(plan.prefill_cells)) {
        side = std::make_unique<SidePrefill>(res_->prefill_ctx.get(), prefill_n_ctx_, ctx_n_batch_);
    }
    const int streams = ctx_n_seq_ / ctx_per_stream_;
    const RunLimits fit{n_ctx_train(), ctx_n_ctx_, ctx_n_seq_,
                        layout_ == KvLayout::PerSequence ? ctx_n_ctx_ / ctx_n_seq_ : 0,
                        layout_ == KvLayout::PerTrack ? ctx_per_stream_ : 0,
                        layout_ == KvLayout::PerTrack ? ctx_n_ctx_ / streams : 0};
    BatchRun::Limits lim{plan.tracks_in_flight, fit, ctx_n_batch_,
                         request.prepare_ahead.value_or(params_.prepare_ahead), params_.n_threads,
                         device_sampling_for(request)};
    lim.side = side.get();
    lim.live_answers = plan.max_tracks > plan.tracks_in_flight ? request.live_answers : 0;
    lim.max_tracks = plan.max_tracks;
    BatchRun run(*res_, request, interrupted, lim, chat, next, done);
    last_run_ = RunStats{};
    last_run_ = run.run();
    last_run_.kv_budget_mb = plan.kv_budget_mb;
    last_run_.live_answers = lim.live_answers;
    return last_run_;
}

// "auto" samples on the device only where the output layer is on a GPU: on a CPU the graph's top-k sorts all
// n_vocab indices where the host fast path scans the row once. `debug` keeps the raw first logits: host path.
DeviceSampling Engine::device_sampling_for(const RunRequest & request) const {
    const DeviceSampling mode = parse_device_sampling(request.sampling_on_device.value_or(params_.sampling_on_device));
    if (request.debug || mode == DeviceSampling::Off) return DeviceSampling::Off;
    return mode == DeviceSampling::On || text_on_gpu_ ? DeviceSampling::On : DeviceSampling::Off;
}

void Engine::check(const std::vector<PromptRequest> & prompts, size_t n_samples, const RunRequest & request) const {
    const TrackShape t = shape_track(llama_model_get_vocab(res_->model.get()), chat_for(request), n_samples, prompts);
    require_fits(t, RunLimits{n_ctx_train()});
}

RunStats Engine::run_stream(const NextTrack & next, const TrackDone & done, const std::vector<PromptRequest> & prompts,
                            const RunRequest & request, const InterruptCheck & interrupted) {
    std::lock_guard<std::mutex> lock(mutex_);
    const double seconds = request.max_audio_seconds > 0 ? request.max_audio_seconds : kStreamAudioSeconds;
    const auto longest = (size_t) (std::min(seconds, 1e7) * kSampleRate);
    const TrackShape t = shape_track(llama_model_get_vocab(res_->model.get()), chat_for(request), longest, prompts);
    return run(next, done, {t}, 0, request, interrupted);
}

std::vector<GenerateResult> Engine::generate_many(const std::vector<TrackRequest> & tracks, const RunRequest & request,
                                                  const InterruptCheck & interrupted) {
    if (tracks.empty()) return {};
    std::lock_guard<std::mutex> lock(mutex_);
    const ChatPieces chat = chat_for(request);
    std::vector<TrackShape> shapes;
    for (const auto & t : tracks) {
        shapes.push_back(shape_track(llama_model_get_vocab(res_->model.get()), chat, t.pcm.size(), t.prompts));
    }
    size_t i = 0;
    std::vector<GenerateResult> results(tracks.size());
    run([&](TrackRequest & out) {
            if (i == tracks.size()) return false;
            out = tracks[i++];
            return true;
        },
        [&](size_t index, GenerateResult && r) { results[index] = std::move(r); }, shapes, tracks.size(), request,
        interrupted);
    for (const auto & r : results) {
        if (r.error) std::rethrow_exception(r.error);
    }
    return results;
}

GenerateResult Engine::generate(const TrackRequest & track, const RunRequest & request,
                                const InterruptCheck & interrupted) {
    RunRequest one = request;
    one.tracks_in_flight = 1;
    return std::move(generate_many({track}, one, interrupted)[0]);
}

std::map<std::string, std::string> build_info() {
    llama_backend_init();
    std::string backends;
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        if (i) backends += ",";
        backends += ggml_backend_reg_name(ggml_backend_reg_get(i));
    }
    return {
        {"llama_cpp_commit", MF_LLAMA_CPP_COMMIT},
        {"llama_cpp_source", MF_LLAMA_CPP_SOURCE},
        {"backends", backends},
        {"system_info", llama_print_system_info()},
    };
}

std::vector<std::map<std::string, std::string>> list_devices() {
    llama_backend_init();
    std::vector<std::map<std::string, std::string>> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        size_t free = 0, total = 0;
        ggml_backend_dev_memory(d, &free, &total);
        const char * type = "cpu";
        switch (ggml_backend_dev_type(d)) {
            case GGML_BACKEND_DEVICE_TYPE_GPU: type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: type = "igpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_ACCEL: type = "accel"; break;
            default: break;
        }
        out.push_back({{"name", ggml_backend_dev_name(d)},
                       {"description", ggml_backend_dev_description(d)},
                       {"type", type},
                       {"memory_free", std::to_string(free)},
                       {"memory_total", std::to_string(total)}});
    }
    return out;
}

}  // namespace mf
