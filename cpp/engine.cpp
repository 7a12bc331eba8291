#include "engine.h"

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

// The chat, formatted by the model's template and cut at the media marker and the prompt slot:
//   head  <marker>  mid  <user text>  tail
// head+marker go to mtmd (which puts the audio where the marker is); mid, user text and tail are the per-prompt
// suffix. For ChatML: head = "<|im_start|>user\n", mid = "", tail = "<|im_end|>\n<|im_start|>assistant\n".
struct Engine::Prompt {
    std::string head, mid, tail;
};

// One 30 s window of the reference framing: encode pcm[start, start+len) (mtmd pads it to 30 s) and feed the LLM
// tokens [keep_from, keep_from+keep_n) of its 750.
struct Engine::Window {
    size_t start, len;
    int keep_from, keep_n;
};

namespace {

constexpr size_t kWindowSamples = 30 * 16000;
constexpr int kWindowTokens = 750;

// Tokens the reference keeps for n real samples of a window: mel frames ceil(n/160), then the stride-2 conv and
// the stride-2 average pool (transformers AudioFlamingo3Encoder._get_feat_extract_output_lengths).
int reference_tokens(size_t n_samples) {
    const long frames = std::min<long>((long) ((n_samples + 159) / 160), 3000);
    const long conv = (frames - 1) / 2 + 1;
    return (int) ((conv - 2) / 2 + 1);
}

}  // namespace

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

    mtmd_context_params cp = mtmd_context_params_default();
    cp.use_gpu = params_.mmproj_use_gpu;
    cp.print_timings = false;
    cp.n_threads = params_.n_threads;
    cp.flash_attn_type = fa_type(params_.flash_attn);
    cp.warmup = params_.warmup;
    mtmd_ = mtmd_init_from_file(params_.mmproj_path.c_str(), model_, cp);
    if (!mtmd_) {
        llama_model_free(model_);
        throw ModelFileError("mtmd could not load the mmproj (does it belong to this model?): " + params_.mmproj_path +
                             " (see the log)");
    }
    if (!mtmd_support_audio(mtmd_)) {
        mtmd_free(mtmd_);
        llama_model_free(model_);
        throw ModelFileError("mmproj has no audio support: " + params_.mmproj_path);
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
    if (model_) llama_model_free(model_);
}

int Engine::sample_rate() const { return mtmd_get_audio_sample_rate(mtmd_); }
int Engine::n_ctx_train() const { return llama_model_n_ctx_train(model_); }

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

// Encodes the first 30 s window of pcm[0, n) (mtmd pads shorter audio with silence). Returns 750 x n_embd floats.
std::vector<float> Engine::encode_window(const float * pcm, size_t n, double & encode_ms) {
    std::unique_ptr<mtmd_bitmap, BitmapDeleter> bmp(mtmd_bitmap_init_from_audio(n, pcm));
    std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks(mtmd_input_chunks_init());
    const char * marker = mtmd_default_marker();
    mtmd_input_text txt{marker, std::strlen(marker), false, true};
    const mtmd_bitmap * bitmaps[1] = {bmp.get()};
    if (!bmp || mtmd_tokenize(mtmd_, chunks.get(), &txt, bitmaps, 1)) throw EngineError("mtmd could not take the audio");
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
        const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
        auto t0 = Clock::now();
        if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
        encode_ms += ms_since(t0);
        const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
        const float * e = mtmd_get_output_embd(mtmd_);
        return std::vector<float>(e, e + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
    }
    throw EngineError("mtmd produced no audio window");
}

// Feeds embeddings to sequence 0 in n_batch slices (what mtmd_helper_decode_image_chunk does, for any token range).
void Engine::decode_embd(const float * embd, int n_tokens, llama_pos & n_past) {
    const int n_embd = llama_model_n_embd_inp(model_);
    llama_batch b = llama_batch_init(ctx_n_batch_, n_embd, 1);
    struct Free { llama_batch & b; ~Free() { llama_batch_free(b); } } free_b{b};
    for (int off = 0; off < n_tokens; off += ctx_n_batch_) {
        const int n = std::min(ctx_n_batch_, n_tokens - off);
        std::memcpy(b.embd, embd + (size_t) off * n_embd, sizeof(float) * (size_t) n * n_embd);
        for (int i = 0; i < n; i++) {
            b.pos[i] = n_past + i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = false;
        }
        b.n_tokens = n;
        if (llama_decode(ctx_, b)) throw EngineError("llama.cpp failed to decode the audio embeddings");
        n_past += n;
    }
}

void Engine::decode_tokens(const std::vector<int32_t> & toks, llama_pos & n_past) {
    Batch b(ctx_n_batch_);
    for (size_t off = 0; off < toks.size(); off += ctx_n_batch_) {
        b.clear();
        for (size_t i = off; i < std::min(toks.size(), off + ctx_n_batch_); i++) b.add(toks[i], n_past++, 0, false);
        if (llama_decode(ctx_, b.b)) throw EngineError("llama.cpp failed to evaluate the prompt prefix");
    }
}

GenerateResult Engine::generate(const std::vector<float> & pcm, const std::vector<PromptRequest> & prompts,
                                const std::string & system_prompt, bool render_special, Framing framing,
                                bool debug, const InterruptCheck & interrupted) {
    // --- validate (before llama.cpp sees anything) ---
    if (pcm.empty()) throw InputError("audio is empty");
    for (float x : pcm) {
        if (!std::isfinite(x)) throw InputError("audio contains NaN or infinite samples");
    }
    if (pcm.size() > 0xFFFFFFF0u) throw InputError("audio is too long");
    if (prompts.empty()) throw InputError("no prompts given");
    for (const auto & p : prompts) {
        if (p.max_tokens < 1) throw InputError("max_tokens must be >= 1");
        if (p.text.find('\0') != std::string::npos) throw InputError("prompt text contains a NUL character");
    }

    std::lock_guard<std::mutex> lock(mutex_);
    const auto t_start = Clock::now();
    const llama_vocab * vocab = llama_model_get_vocab(model_);
    GenerateResult res;
    GenerateStats & st = res.stats;
    st.audio_seconds = (double) pcm.size() / sample_rate();

    // --- format the chat with the model's template ---
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
    Prompt fp{formatted.substr(0, at_marker), formatted.substr(at_marker + marker.size(), at_slot - at_marker - marker.size()),
              formatted.substr(at_slot + std::string(kPromptSlot).size())};

    // --- plan the shared prefix: chat head + audio (+ "\n" in the reference framing) ---
    std::unique_ptr<mtmd_input_chunks, ChunksDeleter> chunks;   // Mtmd framing
    std::vector<int32_t> head_toks, sep_toks;                    // reference framings
    std::vector<Window> windows;
    llama_pos n_prefix = 0;
    if (framing == Framing::Mtmd) {
        std::unique_ptr<mtmd_bitmap, BitmapDeleter> bmp(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
        if (!bmp) throw EngineError("mtmd could not take the audio");
        chunks.reset(mtmd_input_chunks_init());
        const std::string prefix_text = fp.head + marker;
        mtmd_input_text txt{prefix_text.c_str(), prefix_text.size(), /*add_special*/ true, /*parse_special*/ true};
        const mtmd_bitmap * bitmaps[1] = {bmp.get()};
        if (int r = mtmd_tokenize(mtmd_, chunks.get(), &txt, bitmaps, 1)) {
            throw EngineError("mtmd could not tokenize the audio prompt (code " + std::to_string(r) + ")");
        }
        n_prefix = mtmd_helper_get_n_pos(chunks.get());
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_AUDIO) {
                st.audio_chunks++;
                st.audio_tokens += (int) mtmd_input_chunk_get_n_tokens(ch);
            }
        }
    } else {
        const llama_vocab * v = vocab;
        head_toks = tokenize(fp.head, true);
        if (llama_vocab_get_add_bos(v)) head_toks.insert(head_toks.begin(), llama_vocab_bos(v));
        sep_toks = tokenize("\n", false);
        const size_t L = pcm.size();
        const size_t n_win = (L + kWindowSamples - 1) / kWindowSamples;
        for (size_t w = 0; w < n_win; w++) {
            const size_t start = w * kWindowSamples, len = std::min(kWindowSamples, L - start);
            const int keep = len == kWindowSamples ? kWindowTokens : reference_tokens(len);
            if (len < kWindowSamples && framing == Framing::ReferenceTail && L >= kWindowSamples) {
                // the final 30 s of real audio; its last `keep` tokens cover [start, L)
                windows.push_back({L - kWindowSamples, kWindowSamples, kWindowTokens - keep, keep});
            } else {
                windows.push_back({start, len, 0, keep});
            }
            st.audio_tokens += keep;
        }
        st.audio_chunks = (int) windows.size();
        n_prefix = (llama_pos) (head_toks.size() + sep_toks.size()) + st.audio_tokens;
    }
    const size_t N = prompts.size();
    std::vector<std::vector<int32_t>> suffix(N);
    const auto mid_toks = tokenize(fp.mid, true), tail_toks = tokenize(fp.tail, true);
    int n_suffix_total = 0, n_ctx_needed = n_prefix;
    for (size_t s = 0; s < N; s++) {
        auto & t = suffix[s];
        t = mid_toks;
        auto u = tokenize(prompts[s].text, /*parse_special*/ false);  // the user's text never becomes control tokens
        t.insert(t.end(), u.begin(), u.end());
        t.insert(t.end(), tail_toks.begin(), tail_toks.end());
        n_suffix_total += (int) t.size();
        n_ctx_needed += (int) t.size() + prompts[s].max_tokens;
        const long per_seq = (long) n_prefix + (long) t.size() + prompts[s].max_tokens;
        if (per_seq > n_ctx_train()) {
            throw InputError("audio (" + std::to_string(n_prefix) + " positions) + prompt " + std::to_string(s) +
                             " + max_tokens = " + std::to_string(per_seq) + " exceeds the model's trained context of " +
                             std::to_string(n_ctx_train()) + " (shorten the audio or lower max_tokens)");
        }
    }
    st.prefix_tokens = n_prefix;
    st.prompt_tokens = n_suffix_total;

    ensure_context(n_ctx_needed, (int) N, std::max(n_suffix_total, 1));
    st.n_ctx = ctx_n_ctx_;
    llama_memory_t mem = llama_get_memory(ctx_);
    llama_memory_clear(mem, true);

    // --- prefix into sequence 0 ---
    const int n_batch = ctx_n_batch_;
    llama_pos n_past = 0;
    const size_t n_embd = (size_t) llama_model_n_embd_inp(model_);
    if (framing == Framing::Mtmd) {
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); i++) {
            const mtmd_input_chunk * ch = mtmd_input_chunks_get(chunks.get(), i);
            llama_pos new_n_past = n_past;
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                auto t0 = Clock::now();
                if (mtmd_helper_eval_chunk_single(mtmd_, ctx_, ch, n_past, 0, n_batch, false, &new_n_past)) {
                    throw EngineError("llama.cpp failed to evaluate the prompt prefix");
                }
                st.prefill_ms += ms_since(t0);
            } else {
                auto t0 = Clock::now();
                if (mtmd_encode_chunk(mtmd_, ch)) throw EngineError("mtmd failed to encode an audio window");
                st.encode_ms += ms_since(t0);
                t0 = Clock::now();
                float * embd = mtmd_get_output_embd(mtmd_);
                if (debug) res.audio_embd.insert(res.audio_embd.end(), embd, embd + mtmd_input_chunk_get_n_tokens(ch) * n_embd);
                if (mtmd_helper_decode_image_chunk(mtmd_, ctx_, ch, embd, n_past, 0, n_batch, &new_n_past, nullptr, nullptr)) {
                    throw EngineError("llama.cpp failed to decode the audio embeddings");
                }
                st.prefill_ms += ms_since(t0);
            }
            n_past = new_n_past;
            if (interrupted && interrupted()) throw Interrupted("interrupted");
        }
    } else {
        auto t0 = Clock::now();
        decode_tokens(head_toks, n_past);
        st.prefill_ms += ms_since(t0);
        for (const Window & w : windows) {
            std::vector<float> e = encode_window(pcm.data() + w.start, w.len, st.encode_ms);
            const float * kept = e.data() + (size_t) w.keep_from * n_embd;
            if (debug) res.audio_embd.insert(res.audio_embd.end(), kept, kept + (size_t) w.keep_n * n_embd);
            t0 = Clock::now();
            decode_embd(kept, w.keep_n, n_past);
            st.prefill_ms += ms_since(t0);
            if (interrupted && interrupted()) throw Interrupted("interrupted");
        }
        t0 = Clock::now();
        decode_tokens(sep_toks, n_past);
        st.prefill_ms += ms_since(t0);
    }

    // --- fork the prefix to N sequences (metadata only in a unified cache) and add each prompt ---
    auto t_prompts = Clock::now();
    for (size_t s = 1; s < N; s++) llama_memory_seq_cp(mem, 0, (llama_seq_id) s, -1, -1);
    Batch batch(std::max(n_suffix_total, (int) N));
    std::vector<int> logit_idx(N);
    std::vector<llama_pos> pos(N);
    for (size_t s = 0; s < N; s++) {
        for (size_t i = 0; i < suffix[s].size(); i++) {
            int k = batch.add(suffix[s][i], n_past + (llama_pos) i, (llama_seq_id) s, i + 1 == suffix[s].size());
            if (i + 1 == suffix[s].size()) logit_idx[s] = k;
        }
        pos[s] = n_past + (llama_pos) suffix[s].size();
    }
    if (llama_decode(ctx_, batch.b)) throw EngineError("llama.cpp failed to evaluate the prompts");
    st.prefill_ms += ms_since(t_prompts);

    // --- decode all live sequences together, one batch per step ---
    std::vector<SamplerPtr> samplers;
    for (const auto & p : prompts) samplers.push_back(make_sampler(vocab, p.sampling));
    res.outputs.resize(N);
    std::vector<bool> live(N, true);
    auto t_decode = Clock::now();
    size_t n_live = N;
    while (n_live > 0) {
        batch.clear();
        for (size_t s = 0; s < N; s++) {
            if (!live[s]) continue;
            if (debug && s == 0 && res.first_logits.empty()) {
                const float * lg = llama_get_logits_ith(ctx_, logit_idx[0]);
                res.first_logits.assign(lg, lg + llama_vocab_n_tokens(vocab));
            }
            const llama_token tok = llama_sampler_sample(samplers[s].get(), ctx_, logit_idx[s]);
            PromptOutput & out = res.outputs[s];
            if (llama_vocab_is_eog(vocab, tok)) {
                out.stop_reason = "eog";
                live[s] = false; n_live--;
                continue;
            }
            out.tokens.push_back(tok);
            st.tokens_generated++;
            if ((int) out.tokens.size() >= prompts[s].max_tokens) {
                out.stop_reason = "max_tokens";
                live[s] = false; n_live--;
                continue;
            }
            logit_idx[s] = batch.add(tok, pos[s]++, (llama_seq_id) s, true);
        }
        if (batch.b.n_tokens == 0) break;
        if (interrupted && interrupted()) throw Interrupted("interrupted");
        if (llama_decode(ctx_, batch.b)) throw EngineError("llama.cpp failed during generation");
    }
    st.decode_ms = ms_since(t_decode);
    st.decode_tokens_per_s = st.decode_ms > 0 ? st.tokens_generated / (st.decode_ms / 1000.0) : 0.0;
    for (auto & o : res.outputs) o.text = detokenize(vocab, o.tokens, render_special);
    llama_memory_clear(mem, true);
    st.total_ms = ms_since(t_start);
    return res;
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
