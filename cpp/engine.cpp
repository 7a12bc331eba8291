#include "engine.h"

#include "audio_window.h"
#include "ggml-backend.h"
#include "gguf_check.h"
#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

#include <algorithm>
#include <chrono>
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

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Stands in for the user's text while the chat template is applied, so the formatted chat can be cut into
// template pieces (tokenized with special tokens) and the user's text (tokenized as plain text). Plain letters
// survive templates that trim or escape content.
constexpr const char * kPromptSlot = "MUSICFLAMINGOPROMPTSLOT";

struct ChunksDeleter { void operator()(mtmd_input_chunks * c) const { mtmd_input_chunks_free(c); } };
struct BitmapDeleter { void operator()(mtmd_bitmap * b) const { mtmd_bitmap_free(b); } };
struct SamplerDeleter { void operator()(llama_sampler * s) const { llama_sampler_free(s); } };
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

struct Batch {
    llama_batch b;
    explicit Batch(int n) : b(llama_batch_init(n, 0, 1)) {}
    ~Batch() { llama_batch_free(b); }
    void clear() { b.n_tokens = 0; }
    int add(llama_token tok, llama_pos pos, llama_seq_id seq, bool logits) {
        const int k = b.n_tokens++;
        b.token[k] = tok; b.pos[k] = pos; b.n_seq_id[k] = 1; b.seq_id[k][0] = seq; b.logits[k] = logits;
        return k;
    }
};

// HF order (temperature before top-k/top-p), so a given temperature/top_p means what it means in transformers.
SamplerPtr make_sampler(const llama_vocab * vocab, const SamplingParams & s) {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (s.repeat_penalty != 1.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(llama_vocab_n_tokens(vocab), s.repeat_last_n, s.repeat_penalty, 0.0f, 0.0f));
    }
    if (s.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(s.temperature));
    if (s.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(s.top_k));
    if (s.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(s.top_p, 1));
    if (s.min_p > 0.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(s.min_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(s.seed));
    return chain;
}

std::string detokenize(const llama_vocab * vocab, const std::vector<int32_t> & toks, bool special) {
    if (toks.empty()) return "";
    std::string out(toks.size() * 8 + 16, '\0');
    int n = llama_detokenize(vocab, toks.data(), (int32_t) toks.size(), out.data(), (int32_t) out.size(), false, special);
    if (n < 0) {
        out.resize(-n);
        n = llama_detokenize(vocab, toks.data(), (int32_t) toks.size(), out.data(), (int32_t) out.size(), false, special);
    }
    out.resize(std::max(n, 0));
    return out;
}

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

llama_flash_attn_type fa_type(int v) {
    return v < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO : v ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
}

}  // namespace

// One window of a reference framing: encode pcm[start, start+len) (over its real frames with Framing::Reference,
// else padded to 30 s by mtmd, 750 tokens) and feed the LLM tokens [keep_from, keep_from+keep_n) of the result.
struct Engine::Window {
    size_t start, len;
    int keep_from, keep_n;
};

Engine::Engine(const EngineParams & params) : params_(params) {
    if (params_.n_ubatch < 1) throw InputError("n_ubatch must be positive");
    if (params_.n_batch < params_.n_ubatch) params_.n_batch = params_.n_ubatch;
    // Default: half the logical CPUs, about the physical cores (llama.cpp's own default). ggml's thread pool spins
    // while it waits, so a thread per logical CPU fights the audio-decoding thread and anything else running:
    // measured on 2 cores with another process busy, 2 threads ran a decode step 25x slower than 1 (bench/RESULTS.md).
    if (params_.n_threads <= 0) params_.n_threads = (int) std::max(1u, std::thread::hardware_concurrency() / 2);
    kv_ggml_type(params_.kv_type);  // validate early

    check_text_model_file(params_.model_path);
    check_mmproj_file(params_.mmproj_path);

    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params_.n_gpu_layers < 0 ? 999 : params_.n_gpu_layers;
    model_ = llama_model_load_from_file(params_.model_path.c_str(), mp);
    if (!model_) throw ModelFileError("llama.cpp could not load the model: " + params_.model_path + " (see the log)");

    // The audio encoder of the default framing; mtmd's own (a second copy) loads only when a framing that uses it
    // is asked for (ensure_mtmd).
    try {
        encoder_ = std::make_unique<AudioWindowEncoder>(AudioWindowEncoder::Params{
            params_.mmproj_path, params_.mmproj_use_gpu, params_.flash_attn, params_.warmup});
    } catch (...) {
        llama_model_free(model_);
        throw;
    }
    if (encoder_->n_embd() != llama_model_n_embd_inp(model_)) {
        const std::string got = std::to_string(encoder_->n_embd());
        encoder_.reset();
        llama_model_free(model_);
        throw ModelFileError("the mmproj does not belong to this model (audio embeddings of " + got + ", text model " +
                             std::to_string(llama_model_n_embd_inp(model_)) + "): " + params_.mmproj_path);
    }

    const char * tmpl = llama_model_chat_template(model_, nullptr);
    chat_template_ = tmpl ? tmpl : "chatml";

    const int n_layer = llama_model_n_layer(model_);
    ggml_backend_dev_t gpu = first_gpu();
    const int offloaded = gpu ? std::min(mp.n_gpu_layers, n_layer + 1) : 0;
    text_device_ = offloaded > 0 ? device_label(gpu) + ", " + std::to_string(offloaded) + "/" +
                                       std::to_string(n_layer + 1) + " layers"
                                 : "CPU";
    audio_device_ = (gpu && params_.mmproj_use_gpu) ? device_label(gpu) : "CPU";
}

Engine::~Engine() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ctx_) llama_free(ctx_);
    if (mtmd_) mtmd_free(mtmd_);
    encoder_.reset();
    if (model_) llama_model_free(model_);
}

int Engine::sample_rate() const { return encoder_->sample_rate(); }
int Engine::n_ctx_train() const { return llama_model_n_ctx_train(model_); }

// mtmd's audio path (Framing::Mtmd, ReferenceTrim, ReferenceTail) needs an mtmd context, which loads the mmproj's
// encoder a second time: made on first use, so an engine that only uses Framing::Reference holds one copy.
void Engine::ensure_mtmd() {
    if (mtmd_) return;
    mtmd_context_params cp = mtmd_context_params_default();
    cp.use_gpu = params_.mmproj_use_gpu;
    cp.print_timings = false;
    cp.n_threads = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.warmup = params_.warmup;
    mtmd_ = mtmd_init_from_file(params_.mmproj_path.c_str(), model_, cp);
    if (!mtmd_ || !mtmd_support_audio(mtmd_)) {
        if (mtmd_) mtmd_free(mtmd_);
        mtmd_ = nullptr;
        throw EngineError("mtmd could not load the mmproj: " + params_.mmproj_path + " (see the log)");
    }
}

std::string Engine::token_text(bool used, int32_t token) const {
    if (!used || token == LLAMA_TOKEN_NULL) return "";
    const char * t = llama_vocab_get_text(llama_model_get_vocab(model_), token);
    return t ? t : "";
}

std::map<std::string, std::string> Engine::info() const {
    char desc[256];
    llama_model_desc(model_, desc, sizeof desc);
    return {
        {"model_path", params_.model_path},
        {"mmproj_path", params_.mmproj_path},
        {"model_desc", desc},
        {"n_ctx_train", std::to_string(n_ctx_train())},
        {"n_embd", std::to_string(llama_model_n_embd(model_))},
        {"n_layer", std::to_string(llama_model_n_layer(model_))},
        {"chat_template", chat_template_},
        // for rendering the template as transformers does (it passes the tokenizer's special tokens)
        {"bos_token", token_text(llama_vocab_get_add_bos(llama_model_get_vocab(model_)),
                                 llama_vocab_bos(llama_model_get_vocab(model_)))},
        {"eos_token", token_text(true, llama_vocab_eos(llama_model_get_vocab(model_)))},
        {"sample_rate", std::to_string(sample_rate())},
        {"text_model_device", text_device_},
        {"audio_encoder_device", audio_device_},
        {"n_threads", std::to_string(params_.n_threads)},
        {"flash_attn", params_.flash_attn < 0 ? "auto" : params_.flash_attn ? "on" : "off"},
        {"n_ctx", std::to_string(ctx_n_ctx_)},
        {"kv_type", params_.kv_type},
    };
}

std::vector<int32_t> Engine::tokenize(const std::string & text, bool parse_special) const {
    const llama_vocab * vocab = llama_model_get_vocab(model_);
    if (text.empty()) return {};
    std::vector<int32_t> toks(text.size() + 8);
    int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), false,
                           parse_special);
    if (n < 0) {
        toks.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), false,
                           parse_special);
    }
    if (n < 0) throw InputError("could not tokenize prompt text");
    toks.resize(n);
    return toks;
}

// (Re)creates the llama context when a call needs more cells, sequences or batch than the current one has.
// Grows only, rounded up, so a long run settles on one context instead of reallocating per track.
void Engine::ensure_context(int n_ctx_needed, int n_seq, int n_batch_needed) {
    int n_ctx = params_.n_ctx > 0 ? params_.n_ctx : n_ctx_needed;
    if (params_.n_ctx > 0 && n_ctx_needed > params_.n_ctx) {
        throw InputError("audio and prompts need " + std::to_string(n_ctx_needed) + " context tokens but n_ctx is " +
                         std::to_string(params_.n_ctx) + " (shorten the audio, lower max_tokens or raise n_ctx)");
    }
    if (ctx_ && n_ctx <= ctx_n_ctx_ && n_seq <= ctx_n_seq_ && n_batch_needed <= ctx_n_batch_) return;
    if (params_.n_ctx <= 0) n_ctx = std::max(((n_ctx + 1023) / 1024) * 1024, ctx_n_ctx_);
    n_seq = std::max({n_seq, params_.n_seq_max, ctx_n_seq_});
    int n_batch = std::max({params_.n_batch, n_batch_needed, ctx_n_batch_});

    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; ctx_n_ctx_ = ctx_n_seq_ = ctx_n_batch_ = 0; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_ubatch = std::min(params_.n_ubatch, n_batch);
    cp.n_seq_max = n_seq;
    cp.kv_unified = true;  // the forked sequences share the prefix cells instead of copying them
    cp.n_threads = params_.n_threads;
    cp.n_threads_batch = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.type_k = cp.type_v = kv_ggml_type(params_.kv_type);
    cp.no_perf = true;
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) {
        throw EngineError("llama.cpp could not create a context of " + std::to_string(n_ctx) +
                          " tokens (out of memory? see the log)");
    }
    ctx_n_ctx_ = n_ctx; ctx_n_seq_ = n_seq; ctx_n_batch_ = n_batch;
}

// Encodes the first 30 s window of pcm[0, n): over its real frames only (audio_window.h; returns the reference's
// token count), or as mtmd does, padded with silence to 30 s (returns 750 tokens). x n_embd floats. encode_ms gets
// the time from PCM to embeddings (log-mel included).
std::vector<float> Engine::encode_window(const float * pcm, size_t n, bool real_frames_only, double & encode_ms) {
    const auto t0 = Clock::now();
    if (real_frames_only) {
        std::vector<float> e = encoder_->encode(pcm, n, params_.n_threads);
        encode_ms += ms_since(t0);
        return e;
    }
    std::unique_ptr<mtmd_bitmap, BitmapDeleter> bmp(mtmd_bitmap_init_from_audio(n, pcm));
    std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks(mtmd_input_chunks_init());
    const char * marker = mtmd_default_marker();
    mtmd_input_text txt{marker, std::strlen(marker), false, true};
    const mtmd_bitmap * bitmaps[1] = {bmp.get()};
    if (!bmp || mtmd_tokenize(mtmd_, chunks.get(), &txt, bitmaps, 1)) throw EngineError("mtmd could not take the audio");
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
        const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
        if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
        encode_ms += ms_since(t0);
        const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
        const float * e = mtmd_get_output_embd(mtmd_);
        return std::vector<float>(e, e + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
    }
    throw EngineError("mtmd produced no audio window");
}

// Feeds embeddings to sequence `seq` in n_batch slices (what mtmd_helper_decode_image_chunk does, for any token range).
void Engine::decode_embd(const float * embd, int n_tokens, llama_seq_id seq, llama_pos & n_past) {
    const int n_embd = llama_model_n_embd_inp(model_);
    llama_batch b = llama_batch_init(ctx_n_batch_, n_embd, 1);
    struct Free { llama_batch & b; ~Free() { llama_batch_free(b); } } free_b{b};
    for (int off = 0; off < n_tokens; off += ctx_n_batch_) {
        const int n = std::min(ctx_n_batch_, n_tokens - off);
        std::memcpy(b.embd, embd + (size_t) off * n_embd, sizeof(float) * (size_t) n * n_embd);
        for (int i = 0; i < n; i++) {
            b.pos[i] = n_past + i; b.n_seq_id[i] = 1; b.seq_id[i][0] = seq; b.logits[i] = false;
        }
        b.n_tokens = n;
        if (llama_decode(ctx_, b)) throw EngineError("llama.cpp failed to decode the audio embeddings");
        n_past += n;
    }
}

void Engine::decode_tokens(const std::vector<int32_t> & toks, llama_seq_id seq, llama_pos & n_past) {
    Batch b(ctx_n_batch_);
    for (size_t off = 0; off < toks.size(); off += ctx_n_batch_) {
        b.clear();
        for (size_t i = off; i < std::min(toks.size(), off + ctx_n_batch_); i++) b.add(toks[i], n_past++, seq, false);
        if (llama_decode(ctx_, b.b)) throw EngineError("llama.cpp failed to evaluate the prompt prefix");
    }
}

namespace {

void validate_track(const TrackRequest & t) {
    if (t.pcm.empty()) throw InputError("audio is empty");
    for (float x : t.pcm) {
        if (!std::isfinite(x)) throw InputError("audio contains NaN or infinite samples");
    }
    if (t.pcm.size() > 0xFFFFFFF0u) throw InputError("audio is too long");
    if (t.prompts.empty()) throw InputError("no prompts given");
    for (const auto & p : t.prompts) {
        if (p.max_tokens < 1) throw InputError("max_tokens must be >= 1");
        if (p.text.find('\0') != std::string::npos) throw InputError("prompt text contains a NUL character");
    }
}

}  // namespace

// The chat as llama-mtmd-cli formats it (llama.cpp's built-in template for the GGUF's, no default system message),
// cut at the media marker and the prompt slot: head+marker go to mtmd (which puts the audio where the marker is);
// mid, user text and tail are the per-prompt suffix. For ChatML: head = "<|im_start|>user\n", mid = "",
// tail = "<|im_end|>\n<|im_start|>assistant\n".
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
            formatted.resize(n);
            n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, formatted.data(), (int32_t) formatted.size());
        }
        return n;
    };
    int n_fmt = apply(chat_template_.c_str());
    if (n_fmt < 0) n_fmt = apply("chatml");  // a template llama.cpp does not know: fall back to ChatML
    if (n_fmt < 0) throw EngineError("could not apply the chat template");
    formatted.resize(n_fmt);
    const size_t at_marker = formatted.find(marker);
    const size_t at_slot = formatted.find(kPromptSlot);
    if (at_marker == std::string::npos || at_slot == std::string::npos || at_slot < at_marker) {
        throw EngineError("the chat template dropped the audio marker or the prompt");
    }
    return {formatted.substr(0, at_marker), formatted.substr(at_marker + marker.size(), at_slot - at_marker - marker.size()),
            formatted.substr(at_slot + std::string(kPromptSlot).size())};
}

// What one track puts in front of its prompts: planned (tokenized, windows chosen) before any decoding, so its
// length is known; evaluated into one sequence when the track is admitted.
struct Engine::Prefix {
    std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks;  // Mtmd framing
    std::vector<int32_t> head_toks;                             // reference framings
    std::vector<Window> windows;
    bool real_frames_only = false;                              // Framing::Reference
    llama_pos n_pos = 0;
};

Engine::Prefix Engine::plan_prefix(const std::vector<float> & pcm, const ChatPieces & fp, Framing framing,
                                   GenerateStats & st) const {
    Prefix px;
    if (framing == Framing::Mtmd) {
        const std::string marker = mtmd_default_marker();
        std::unique_ptr<mtmd_bitmap, BitmapDeleter> bmp(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
        if (!bmp) throw EngineError("mtmd could not take the audio");
        px.chunks.reset(mtmd_input_chunks_init());
        const std::string prefix_text = fp.head + marker;
        mtmd_input_text txt{prefix_text.c_str(), prefix_text.size(), /*add_special*/ true, /*parse_special*/ true};
        const mtmd_bitmap * bitmaps[1] = {bmp.get()};
        if (int r = mtmd_tokenize(mtmd_, px.chunks.get(), &txt, bitmaps, 1)) {
            throw EngineError("mtmd could not tokenize the audio prompt (code " + std::to_string(r) + ")");
        }
        px.n_pos = mtmd_helper_get_n_pos(px.chunks.get());
        for (size_t i = 0; i < mtmd_input_chunks_size(px.chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(px.chunks.get(), i);
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_AUDIO) {
                st.audio_chunks++;
                st.audio_tokens += (int) mtmd_input_chunk_get_n_tokens(ch);
            }
        }
        return px;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model_);
    px.head_toks = tokenize(fp.head, true);
    if (llama_vocab_get_add_bos(vocab)) px.head_toks.insert(px.head_toks.begin(), llama_vocab_bos(vocab));
    const size_t L = pcm.size();
    px.real_frames_only = framing == Framing::Reference;
    for (const AudioWindow & w : plan_reference_windows(L)) {
        if (framing == Framing::ReferenceTail && w.len < kWindowSamples && L >= kWindowSamples) {
            // the final 30 s of real audio; its last `n_tokens` tokens cover [w.start, L)
            px.windows.push_back({L - kWindowSamples, kWindowSamples, kWindowTokens - w.n_tokens, w.n_tokens});
        } else {
            px.windows.push_back({w.start, w.len, 0, w.n_tokens});  // ReferenceTrim: mtmd pads it to 30 s
        }
        st.audio_tokens += w.n_tokens;
    }
    if (px.windows.empty()) throw InputError("audio shorter than 20 ms gives no audio token");
    st.audio_chunks = (int) px.windows.size();
    px.n_pos = (llama_pos) px.head_toks.size() + st.audio_tokens;
    return px;
}

// Evaluates a planned prefix into sequence `seq`; returns the next position. `embd_out` (debug) receives the audio
// embeddings as fed.
llama_pos Engine::eval_prefix(Prefix & px, const std::vector<float> & pcm, llama_seq_id seq, GenerateStats & st,
                              std::vector<float> * embd_out, const InterruptCheck & interrupted) {
    llama_pos n_past = 0;
    const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
    if (px.chunks) {
        for (size_t i = 0; i < mtmd_input_chunks_size(px.chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(px.chunks.get(), i);
            llama_pos new_n_past = n_past;
            auto t0 = Clock::now();
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                if (mtmd_helper_eval_chunk_single(mtmd_, ctx_, ch, n_past, seq, ctx_n_batch_, false, &new_n_past)) {
                    throw EngineError("llama.cpp failed to evaluate the prompt prefix");
                }
            } else {
                if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
                st.encode_ms += ms_since(t0);
                t0 = Clock::now();
                float * embd = mtmd_get_output_embd(mtmd_);
                if (embd_out) embd_out->insert(embd_out->end(), embd, embd + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
                if (mtmd_helper_decode_image_chunk(mtmd_, ctx_, ch, embd, n_past, seq, ctx_n_batch_, &new_n_past,
                                                   nullptr, nullptr)) {
                    throw EngineError("llama.cpp failed to decode the audio embeddings");
                }
            }
            st.prefill_ms += ms_since(t0);
            n_past = new_n_past;
            if (interrupted && interrupted()) throw Interrupted("interrupted");
        }
        return n_past;
    }
    auto t0 = Clock::now();
    decode_tokens(px.head_toks, seq, n_past);
    st.prefill_ms += ms_since(t0);
    for (const Window & w : px.windows) {
        std::vector<float> e = encode_window(pcm.data() + w.start, w.len, px.real_frames_only, st.encode_ms);
        const float * kept = e.data() + (size_t) w.keep_from * n_embd;
        if (embd_out) embd_out->insert(embd_out->end(), kept, kept + (size_t) w.keep_n * n_embd);
        t0 = Clock::now();
        decode_embd(kept, w.keep_n, seq, n_past);
        st.prefill_ms += ms_since(t0);
        if (interrupted && interrupted()) throw Interrupted("interrupted");
    }
    return n_past;
}

GenerateResult Engine::generate(const std::vector<float> & pcm, const std::vector<PromptRequest> & prompts,
                                const std::string & system_prompt, bool render_special, Framing framing,
                                bool debug, const InterruptCheck & interrupted, const std::optional<ChatPieces> & chat) {
    std::vector<TrackRequest> one(1);
    one[0].pcm = pcm;
    one[0].prompts = prompts;
    return std::move(generate_many(one, system_prompt, render_special, framing, 1, debug, interrupted, chat)[0]);
}

// Continuous batching over tracks. Up to `max_in_flight` tracks are active; each owns one sequence per prompt,
// forked from its own prefix. Every step decodes the next token of every live sequence of every active track in
// one batch; when a track's last sequence ends, its cells are freed and the next track is admitted (its prefix
// is evaluated between two steps). With max_in_flight = 1 this is the plain one-track path.
std::vector<GenerateResult> Engine::generate_many(const std::vector<TrackRequest> & tracks,
                                                  const std::string & system_prompt, bool render_special,
                                                  Framing framing, int max_in_flight, bool debug,
                                                  const InterruptCheck & interrupted,
                                                  const std::optional<ChatPieces> & chat) {
    if (tracks.empty()) return {};
    for (const auto & t : tracks) validate_track(t);
    if (framing != Framing::Mtmd && !chat) {
        throw InputError("this framing needs the chat rendered from the model's template (ChatPieces)");
    }
    size_t most_prompts = 1;
    for (const auto & t : tracks) most_prompts = std::max(most_prompts, t.prompts.size());
    // llama.cpp allows at most 256 sequences in one context (LLAMA_MAX_SEQ, src/llama-cparams.h: not public)
    const int seq_cap = std::max(1, (int) (256 / most_prompts));
    max_in_flight = std::max(1, std::min({max_in_flight, (int) tracks.size(), seq_cap}));

    std::lock_guard<std::mutex> lock(mutex_);
    if (framing != Framing::Reference) ensure_mtmd();
    const llama_vocab * vocab = llama_model_get_vocab(model_);
    const ChatPieces fp = framing == Framing::Mtmd ? format_chat(system_prompt) : *chat;
    const auto mid_toks = tokenize(fp.mid, true), tail_toks = tokenize(fp.tail, true);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    // Per-prompt suffix tokens, and a context big enough for the `max_in_flight` largest tracks at once.
    // The audio's share is bounded from its length (exact counts come at admission): 750 per started 30 s + 2.
    std::vector<std::vector<std::vector<int32_t>>> suffix(tracks.size());
    std::vector<int> need(tracks.size());
    int max_suffix_total = 1;
    for (size_t t = 0; t < tracks.size(); t++) {
        int n = 8 + kWindowTokens * (int) (tracks[t].pcm.size() / kWindowSamples + 2), n_suffix = 0;
        for (const auto & p : tracks[t].prompts) {
            std::vector<int32_t> toks = mid_toks;
            auto u = tokenize(p.text, /*parse_special*/ false);  // the user's text never becomes control tokens
            toks.insert(toks.end(), u.begin(), u.end());
            toks.insert(toks.end(), tail_toks.begin(), tail_toks.end());
            n += (int) toks.size() + p.max_tokens;
            n_suffix += (int) toks.size();
            suffix[t].push_back(std::move(toks));
        }
        need[t] = n;
        max_suffix_total = std::max(max_suffix_total, n_suffix);
    }
    std::sort(need.rbegin(), need.rend());
    int n_ctx_needed = 0;
    for (int i = 0; i < max_in_flight; i++) n_ctx_needed += need[i];
    const int n_seq_total = max_in_flight * (int) most_prompts;
    ensure_context(n_ctx_needed, n_seq_total, max_suffix_total);
    llama_memory_t mem = llama_get_memory(ctx_);
    llama_memory_clear(mem, true);

    struct Active {
        size_t track;
        std::vector<llama_seq_id> seqs;
        std::vector<SamplerPtr> samplers;
        std::vector<int> logit_idx;
        std::vector<llama_pos> pos;
        std::vector<bool> live;
        size_t n_live = 0;
        Clock::time_point t_start, t_decode;
    };
    std::vector<GenerateResult> results(tracks.size());
    std::vector<Active> active;
    std::vector<llama_seq_id> free_seqs;
    for (int s = ctx_n_seq_ - 1; s >= 0; s--) free_seqs.push_back(s);
    size_t next_track = 0;
    Batch step(std::max(n_seq_total, 1));

    // Samples sequence i of track a from the logits at a.logit_idx[i]; queues the token in `into` or retires it.
    auto sample = [&](Active & a, size_t i, Batch & into) {
        const PromptRequest & p = tracks[a.track].prompts[i];
        PromptOutput & out = results[a.track].outputs[i];
        if (debug && a.track == 0 && i == 0 && results[0].first_logits.empty()) {
            const float * lg = llama_get_logits_ith(ctx_, a.logit_idx[i]);
            results[0].first_logits.assign(lg, lg + n_vocab);
        }
        const llama_token tok = llama_sampler_sample(a.samplers[i].get(), ctx_, a.logit_idx[i]);
        if (llama_vocab_is_eog(vocab, tok)) {
            out.stop_reason = "eog";
        } else {
            out.tokens.push_back(tok);
            results[a.track].stats.tokens_generated++;
            if ((int) out.tokens.size() < p.max_tokens) {
                a.logit_idx[i] = into.add(tok, a.pos[i]++, a.seqs[i], true);
                return;
            }
            out.stop_reason = "max_tokens";
        }
        a.live[i] = false;
        a.n_live--;
    };

    // Evaluates the next track's prefix into its first sequence, forks it, decodes its prompts and samples their
    // first tokens into `step`.
    auto admit = [&](size_t t) {
        const TrackRequest & tr = tracks[t];
        GenerateResult & res = results[t];
        GenerateStats & st = res.stats;
        Active a;
        a.track = t;
        a.t_start = Clock::now();
        st.audio_seconds = (double) tr.pcm.size() / sample_rate();
        st.n_ctx = ctx_n_ctx_;
        Prefix px = plan_prefix(tr.pcm, fp, framing, st);
        for (size_t i = 0; i < tr.prompts.size(); i++) {
            const long per_seq = (long) px.n_pos + (long) suffix[t][i].size() + tr.prompts[i].max_tokens;
            if (per_seq > n_ctx_train()) {
                throw InputError("audio (" + std::to_string(px.n_pos) + " positions) + prompt " + std::to_string(i) +
                                 " + max_tokens = " + std::to_string(per_seq) + " exceeds the model's trained context of " +
                                 std::to_string(n_ctx_train()) + " (shorten the audio or lower max_tokens)");
            }
            st.prompt_tokens += (int) suffix[t][i].size();
        }
        st.prefix_tokens = px.n_pos;
        if (debug && t == 0) {  // prompt 0 as fed, -1 per audio position
            auto & pt = res.prompt_tokens;
            if (px.chunks) {
                for (size_t i = 0; i < mtmd_input_chunks_size(px.chunks.get()); i++) {
                    const mtmd_input_chunk * ch = mtmd_input_chunks_get(px.chunks.get(), i);
                    size_t n = 0;
                    if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_TEXT) {
                        pt.insert(pt.end(), mtmd_input_chunk_get_n_tokens(ch), -1);
                    } else if (const llama_token * tk = mtmd_input_chunk_get_tokens_text(ch, &n)) {
                        pt.insert(pt.end(), tk, tk + n);
                    }
                }
            } else {
                pt = px.head_toks;
                pt.insert(pt.end(), (size_t) st.audio_tokens, -1);
            }
            pt.insert(pt.end(), suffix[t][0].begin(), suffix[t][0].end());
        }
        for (size_t i = 0; i < tr.prompts.size(); i++) {
            a.seqs.push_back(free_seqs.back());
            free_seqs.pop_back();
        }
        const llama_pos n_past = eval_prefix(px, tr.pcm, a.seqs[0], st, debug && t == 0 ? &res.audio_embd : nullptr,
                                             interrupted);
        auto t0 = Clock::now();
        for (size_t i = 1; i < a.seqs.size(); i++) llama_memory_seq_cp(mem, a.seqs[0], a.seqs[i], -1, -1);
        Batch prompts_batch(std::max(st.prompt_tokens, 1));
        for (size_t i = 0; i < tr.prompts.size(); i++) {
            const auto & toks = suffix[t][i];
            for (size_t k = 0; k < toks.size(); k++) {
                const int idx = prompts_batch.add(toks[k], n_past + (llama_pos) k, a.seqs[i], k + 1 == toks.size());
                if (k + 1 == toks.size()) a.logit_idx.push_back(idx);
            }
            a.pos.push_back(n_past + (llama_pos) toks.size());
            a.samplers.push_back(make_sampler(vocab, tr.prompts[i].sampling));
        }
        if (llama_decode(ctx_, prompts_batch.b)) throw EngineError("llama.cpp failed to evaluate the prompts");
        st.prefill_ms += ms_since(t0);
        res.outputs.resize(tr.prompts.size());
        a.live.assign(tr.prompts.size(), true);
        a.n_live = tr.prompts.size();
        a.t_decode = Clock::now();
        for (size_t i = 0; i < tr.prompts.size(); i++) sample(a, i, step);
        active.push_back(std::move(a));
    };

    // Frees the cells and sequences of finished tracks and completes their results.
    auto retire = [&]() {
        for (size_t k = 0; k < active.size();) {
            Active & a = active[k];
            if (a.n_live > 0) { k++; continue; }
            GenerateResult & res = results[a.track];
            for (auto s : a.seqs) {
                llama_memory_seq_rm(mem, s, -1, -1);
                free_seqs.push_back(s);
            }
            res.stats.decode_ms = ms_since(a.t_decode);
            res.stats.decode_tokens_per_s =
                res.stats.decode_ms > 0 ? res.stats.tokens_generated / (res.stats.decode_ms / 1000.0) : 0.0;
            res.stats.total_ms = ms_since(a.t_start);
            for (auto & o : res.outputs) o.text = detokenize(vocab, o.tokens, render_special);
            active.erase(active.begin() + (long) k);
        }
    };

    while (next_track < tracks.size() || !active.empty()) {
        step.clear();
        for (auto & a : active) {
            for (size_t i = 0; i < a.live.size(); i++) {
                if (a.live[i]) sample(a, i, step);
            }
        }
        retire();
        while (next_track < tracks.size() && (int) active.size() < max_in_flight &&
               free_seqs.size() >= tracks[next_track].prompts.size()) {
            admit(next_track++);
            retire();  // a track whose prompts all ended on their first token
        }
        if (step.b.n_tokens == 0) continue;
        if (interrupted && interrupted()) throw Interrupted("interrupted");
        if (llama_decode(ctx_, step.b)) throw EngineError("llama.cpp failed during generation");
    }
    llama_memory_clear(mem, true);
    return results;
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
