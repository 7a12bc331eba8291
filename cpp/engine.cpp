#include "engine.h"

#include "audio_window.h"
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
// llama.cpp allows at most 256 sequences in one context (LLAMA_MAX_SEQ, src/llama-cparams.h: not public).
constexpr int kMaxSequences = 256;
constexpr size_t kTenMinutes = 600 * 16000;

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

// The KV cells a track can ever need besides its prefix: every prompt's suffix and token limit. A sequence never
// runs past the trained context (such a track fails before anything is decoded), so no prompt counts for more:
// an absurd max_tokens cannot size an absurd context.
// `most` (if given) receives the most any one prompt takes: a sequence's share without the prefix.
int text_cells(const llama_vocab * vocab, const ChatPieces & chat, const std::vector<PromptRequest> & prompts,
               int n_ctx_train, int * most = nullptr) {
    const int around = (int) (tokenize(vocab, chat.mid, true).size() + tokenize(vocab, chat.tail, true).size());
    long n = 0, top = 0;
    for (const auto & p : prompts) {
        long chain = 0;  // a known answer and the follow-ups (followup.h)
        const long followups = followup_cells(vocab, chat, p, &chain);
        const long one = std::min<long>(around + (long) tokenize(vocab, p.text, false).size() + std::max(p.max_tokens, 0) +
                                            chain, n_ctx_train);
        n += one + followups;
        top = std::max(top, one);
    }
    if (most) *most = (int) top;
    return (int) std::min<long>(n, 1L << 30);
}

[[noreturn]] void rethrow_track_error(const GenerateResult & r) {
    if (r.error_kind == "InputError") throw InputError(r.error);
    if (r.error_kind == "ModelFileError") throw ModelFileError(r.error);
    throw EngineError(r.error);
}

}  // namespace

// How one run is sized: the tracks that may decode together, the context's cells and sequences.
struct Engine::Sizing {
    int in_flight = 1;
    int n_ctx = 0;
    int n_seq = 1;
    int seq_cells = 0;  // without a unified cache: cells of each sequence's stream
    double kv_budget_mb = 0;
};

Engine::Engine(const EngineParams & params) : params_(params), res_(std::make_unique<Resources>()) {
    if (params_.n_ubatch < 1) throw InputError("n_ubatch must be positive");
    if (params_.n_batch < params_.n_ubatch) params_.n_batch = params_.n_ubatch;
    // Default: half the logical CPUs, about the physical cores (llama.cpp's own default). ggml's thread pool spins
    // while it waits, so a thread per logical CPU fights the audio-decoding thread and anything else running:
    // measured on 2 cores with another process busy, 2 threads ran a decode step 25x slower than 1 (bench/RESULTS.md).
    const int n_cpu = (int) std::max(1u, std::thread::hardware_concurrency());
    if (params_.n_threads <= 0) params_.n_threads = std::max(1, n_cpu / 2);
    kv_ggml_type(params_.kv_type);  // validate early

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
ChatPieces Engine::chat_for(const RunOptions & opts) const {
    if (opts.framing == Framing::Mtmd) return format_chat(opts.system_prompt);
    if (!opts.chat) throw InputError("this framing needs the chat rendered from the model's template (ChatPieces)");
    return *opts.chat;
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
        {"kv_cell_bytes", std::to_string((long) kv_cell_bytes())},
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

// (Re)creates the llama context when a run needs more cells, sequences or batch than the current one has.
// Grows only, rounded up, so a long run settles on one context instead of reallocating per call.
void Engine::ensure_context(int n_ctx_needed, int n_seq, int n_batch_needed, int seq_cells) {
    int n_ctx = params_.n_ctx > 0 ? params_.n_ctx : n_ctx_needed;
    n_seq = std::min(kMaxSequences, std::max({n_seq, params_.n_seq_max, ctx_n_seq_}));
    const int n_batch = std::max({params_.n_batch, n_batch_needed, ctx_n_batch_});
    if (!params_.kv_unified) {
        // one stream of n_ctx / n_seq cells per sequence: size the streams, not the total
        seq_cells = ((std::max({seq_cells, 256, ctx_n_seq_ ? ctx_n_ctx_ / ctx_n_seq_ : 0}) + 255) / 256) * 256;
        n_ctx = std::max(n_ctx, seq_cells * n_seq);
        if (res_->ctx && n_seq <= ctx_n_seq_ && seq_cells <= ctx_n_ctx_ / ctx_n_seq_ && n_batch <= ctx_n_batch_) return;
        n_ctx = seq_cells * n_seq;
    } else if (res_->ctx && n_ctx <= ctx_n_ctx_ && n_seq <= ctx_n_seq_ && n_batch <= ctx_n_batch_) {
        return;
    }
    if (params_.n_ctx <= 0 && params_.kv_unified) n_ctx = std::max(((n_ctx + 255) / 256) * 256, ctx_n_ctx_);  // llama.cpp pads to 256

    res_->ctx.reset();
    ctx_n_ctx_ = ctx_n_seq_ = ctx_n_batch_ = 0;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) std::min(params_.n_ubatch, n_batch);
    cp.n_seq_max = (uint32_t) n_seq;
    // A decode outputs at most one row per sequence (a step: one per live sequence; a track's prompts: one each).
    // Left at 0 llama.cpp reserves n_batch rows of logits in the compute buffer (~1.2 GB for Qwen's vocabulary).
    cp.n_outputs_max = (uint32_t) n_seq;
    cp.kv_unified = params_.kv_unified;  // true: the forked sequences share the prefix cells instead of copying them
    cp.n_threads = params_.n_threads;
    cp.n_threads_batch = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.type_k = cp.type_v = kv_ggml_type(params_.kv_type);
    cp.no_perf = true;
    res_->ctx.reset(llama_init_from_model(res_->model.get(), cp));
    if (!res_->ctx) {
        throw EngineError("llama.cpp could not create a context of " + std::to_string(n_ctx) +
                          " tokens (out of memory? see the log)");
    }
    ctx_n_ctx_ = n_ctx; ctx_n_seq_ = n_seq; ctx_n_batch_ = n_batch;
}

// Tracks in flight and context size for a run. `cells` (largest first) are the KV cells the tracks can need: each
// known track's, or for a stream the longest expected track's. Automatic sizing fills at most the memory budget
// (free device memory after the model, less room for compute buffers) up to the cap; the KV cells actually free
// decide admissions inside the run, so short tracks fill the same context more densely than long ones.
Engine::Sizing Engine::size_run(const RunOptions & opts) {
    Sizing sz;
    const int max_prompts = std::max(1, opts.max_prompts);
    const int seq_cap = std::max(1, kMaxSequences / max_prompts);
    std::vector<int> cells = opts.track_cells;
    std::sort(cells.rbegin(), cells.rend());
    auto sum_top = [&](int t) {
        long s = 0;
        for (int i = 0; i < t; i++) s += cells.empty() ? 0 : cells[std::min((size_t) i, cells.size() - 1)];
        return (int) std::min<long>(s, 1L << 30);
    };
    if (!params_.kv_unified) {
        // a stream per sequence, each big enough for the longest sequence
        const int per_seq = std::max(opts.max_seq_cells, 256);
        sz.in_flight = opts.tracks_in_flight > 0 ? opts.tracks_in_flight : text_on_gpu_ ? kAutoInFlightGpu : kAutoInFlightCpu;
        if (opts.tracks_in_flight <= 0) {
            double budget = params_.memory_budget_mb * 1024.0 * 1024.0;
            if (budget <= 0) budget = free_memory_budget();
            sz.kv_budget_mb = budget / (1024.0 * 1024.0);
            const double per_track = (double) per_seq * max_prompts * kv_cell_bytes();
            sz.in_flight = std::max(1, std::min(sz.in_flight, (int) (budget / per_track)));
        }
        if (opts.known_tracks > 0) sz.in_flight = std::min<int>(sz.in_flight, (int) opts.known_tracks);
        sz.in_flight = std::min(sz.in_flight, seq_cap);
        sz.n_seq = sz.in_flight * max_prompts;
        sz.n_ctx = sz.n_seq * per_seq;
        sz.seq_cells = per_seq;
        return sz;
    }
    if (opts.tracks_in_flight > 0) {
        sz.in_flight = opts.tracks_in_flight;
        if (opts.known_tracks > 0) sz.in_flight = std::min<int>(sz.in_flight, (int) opts.known_tracks);
        sz.in_flight = std::min(sz.in_flight, seq_cap);
        sz.n_ctx = sum_top(sz.in_flight);
    } else {
        const double cell_bytes = kv_cell_bytes();
        double budget = params_.memory_budget_mb * 1024.0 * 1024.0;
        if (budget <= 0) budget = free_memory_budget();
        sz.kv_budget_mb = budget / (1024.0 * 1024.0);
        const int fit = (int) std::clamp(budget / cell_bytes, 0.0, (double) (1 << 30));
        sz.in_flight = text_on_gpu_ ? kAutoInFlightGpu : kAutoInFlightCpu;
        if (opts.known_tracks > 0) sz.in_flight = std::min<int>(sz.in_flight, (int) opts.known_tracks);
        sz.in_flight = std::min(sz.in_flight, seq_cap);
        // cells are upper bounds (a silent window more than any track has): tracks usually fit more densely
        sz.n_ctx = std::min(sum_top(sz.in_flight), fit);
    }
    sz.n_ctx = std::max(sz.n_ctx, 256);
    sz.n_seq = sz.in_flight * max_prompts;
    return sz;
}

RunStats Engine::run(const NextTrack & next, const TrackDone & done, const RunOptions & opts) {
    if (opts.max_prompts < 1) throw InputError("max_prompts must be >= 1");
    std::lock_guard<std::mutex> lock(mutex_);
    const ChatPieces chat = chat_for(opts);
    if (opts.framing != Framing::Reference) ensure_mtmd();
    RunOptions o = opts;
    if (o.track_cells.empty()) {
        // a stream: size for its longest expected track
        const int prefix =
            std::min(max_prefix_positions(chat, o.max_audio_samples ? o.max_audio_samples : kTenMinutes), n_ctx_train());
        o.track_cells.push_back(prefix + o.max_text_cells);
        o.max_seq_cells = prefix + o.max_prompt_cells;
    }
    Sizing sz = size_run(o);
    // Out of memory for the context: fewer tracks in flight, down to one.
    for (;;) {
        try {
            ensure_context(sz.n_ctx, sz.n_seq, o.n_batch_needed, sz.seq_cells);
            break;
        } catch (const EngineError &) {
            if (sz.in_flight <= 1) throw;
            sz.in_flight = std::max(1, sz.in_flight / 2);
            sz.n_ctx = std::max(256, sz.n_ctx / 2);
            sz.n_seq = sz.in_flight * std::max(1, o.max_prompts);
            if (!params_.kv_unified) sz.n_ctx = sz.n_seq * sz.seq_cells;
        }
    }
    const bool ahead = o.prepare_ahead < 0 ? params_.prepare_ahead : o.prepare_ahead > 0;
    BatchRun::Limits lim{sz.in_flight, ctx_n_ctx_, ctx_n_seq_, ctx_n_batch_, n_ctx_train(), ahead, params_.n_threads,
                         params_.kv_unified ? 0 : ctx_n_ctx_ / ctx_n_seq_};
    BatchRun run(*res_, o, lim, chat, next, done);
    last_run_ = RunStats{};
    last_run_ = run.run();
    last_run_.kv_budget_mb = sz.kv_budget_mb;
    return last_run_;
}

int Engine::prompts_cells(const std::vector<PromptRequest> & prompts, const RunOptions & opts, int * most) const {
    return text_cells(llama_model_get_vocab(res_->model.get()), chat_for(opts), prompts, n_ctx_train(), most);
}

std::vector<GenerateResult> Engine::generate_many(const std::vector<TrackRequest> & tracks,
                                                  const std::string & system_prompt, bool render_special,
                                                  Framing framing, int max_in_flight, bool debug,
                                                  const InterruptCheck & interrupted,
                                                  const std::optional<ChatPieces> & chat_pieces) {
    if (tracks.empty()) return {};
    RunOptions o;
    o.system_prompt = system_prompt;
    o.chat = chat_pieces;
    o.render_special = render_special;
    o.framing = framing;
    o.tracks_in_flight = max_in_flight;
    o.known_tracks = tracks.size();
    o.debug = debug;
    o.interrupted = interrupted;
    {
        const ChatPieces chat = chat_for(o);
        const llama_vocab * vocab = llama_model_get_vocab(res_->model.get());
        const auto mid = tokenize(vocab, chat.mid, true), tail = tokenize(vocab, chat.tail, true);
        for (const auto & t : tracks) {
            o.max_prompts = std::max(o.max_prompts, track_sequences(t.prompts));  // sequences per track
            const int prefix = std::min(max_prefix_positions(chat, t.pcm.size()), n_ctx_train());
            int most = 0;
            o.track_cells.push_back(prefix + text_cells(vocab, chat, t.prompts, n_ctx_train(), &most));
            o.max_seq_cells = std::max(o.max_seq_cells, prefix + most);
            int suffix = 0;
            for (const auto & p : t.prompts) suffix += (int) (mid.size() + tail.size() + tokenize(vocab, p.text, false).size());
            o.n_batch_needed = std::max(o.n_batch_needed, suffix);  // all prompts of a track in one batch
        }
    }
    o.max_prompts = std::max(o.max_prompts, 1);
    size_t i = 0;
    std::vector<GenerateResult> results(tracks.size());
    run([&](TrackRequest & out) {
            if (i == tracks.size()) return false;
            out = tracks[i++];
            return true;
        },
        [&](size_t index, GenerateResult && r) { results[index] = std::move(r); }, o);
    for (const auto & r : results) {
        if (!r.error_kind.empty()) rethrow_track_error(r);
    }
    return results;
}

GenerateResult Engine::generate(const std::vector<float> & pcm, const std::vector<PromptRequest> & prompts,
                                const std::string & system_prompt, bool render_special, Framing framing,
                                bool debug, const InterruptCheck & interrupted, const std::optional<ChatPieces> & chat) {
    std::vector<TrackRequest> one(1);
    one[0].pcm = pcm;
    one[0].prompts = prompts;
    return std::move(generate_many(one, system_prompt, render_special, framing, 1, debug, interrupted, chat)[0]);
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
