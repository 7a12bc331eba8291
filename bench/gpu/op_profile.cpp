// Where a decode step's time goes: matrix products with the weights vs attention vs the rest (issue 18, item 6).
//
// A bench-only program on llama.h alone (the engine is untouched): it loads the model, fills one unified KV cache
// the way the engine's stream path does (K tracks of P prefix cells each, forked to A answers per track), then times
//   - one more track's prefill on top of those K tracks (what admitting a track costs the decode thread), and
//   - decode steps of B = K x A tokens, one per answer (the batch the engine steps),
// once plainly (the true time) and once with ggml's eval callback asking for every node, which makes the scheduler
// compute node by node with a synchronize after each: the gaps between callbacks are per-node device times. The
// per-node launch + synchronize overhead is estimated as (profiled - plain) / nodes and reported (and subtracted in
// the "corrected" numbers), because it inflates the categories with many small nodes. Fused kernels run unfused
// under the callback; the plain time is the one to quote, the shares are what this is for.
//
// usage: op-profile -m MODEL.gguf [--tracks 4,8,16] [--prefix 3800] [--answers 5] [--steps 8] [--ngl 99]
//                   [--fa auto|on|off] [--threads N] [--out FILE.json]
// build: bench/gpu/build_op_profile.sh (against the llama.cpp libraries the bench already has)
#include "ggml-backend.h"
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

struct Args {
    std::string model, out;
    std::vector<int> tracks{4, 8, 16};
    int prefix = 3800, answers = 5, steps = 8, ngl = 99, threads = 4, ubatch = 1024;
    std::string fa = "auto";
};

// The category a node's time counts towards. Nodes without work (views) are never asked for: their (zero) time
// falls into the next node's, and they add no synchronize.
const char * category(const ggml_tensor * t) {
    switch (t->op) {
        case GGML_OP_MUL_MAT:
        case GGML_OP_MUL_MAT_ID:
            // a product with a weight tensor, or one of attention's (K^T Q, V softmax) without flash attention
            return (t->src[0] && std::strstr(t->src[0]->name, ".weight")) ? "matmul" : "attention";
        case GGML_OP_FLASH_ATTN_EXT:
        case GGML_OP_SOFT_MAX:
            return "attention";
        default:
            return "rest";
    }
}

bool no_work(const ggml_tensor * t) {
    return t->op == GGML_OP_NONE || t->op == GGML_OP_VIEW || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_PERMUTE ||
           t->op == GGML_OP_TRANSPOSE;
}

struct Profile {
    bool on = false;
    Clock::time_point last;
    long nodes = 0;
    std::map<std::string, double> by_cat, by_op;
    std::map<std::string, long> n_cat;
    void reset() { nodes = 0; by_cat.clear(); by_op.clear(); n_cat.clear(); }
};

bool on_node(ggml_tensor * t, bool ask, void * user) {
    auto * p = static_cast<Profile *>(user);
    if (ask) return p->on && !no_work(t);
    double dt = ms_since(p->last);
    p->last = Clock::now();
    const char * cat = category(t);
    p->by_cat[cat] += dt;
    p->n_cat[cat] += 1;
    bool lm_head = t->src[0] && std::strcmp(t->src[0]->name, "output.weight") == 0;
    p->by_op[std::string(ggml_op_desc(t)) + (lm_head ? " (output)" : "")] += dt;
    p->nodes += 1;
    return true;
}

// One llama_decode, timed (the profile's clock restarts at its start; the first node absorbs the input upload).
double decode_ms(llama_context * ctx, llama_batch & b, Profile & prof) {
    Clock::time_point t0 = Clock::now();
    prof.last = t0;
    if (llama_decode(ctx, b) != 0) {
        std::fprintf(stderr, "llama_decode failed\n");
        std::exit(2);
    }
    llama_synchronize(ctx);
    return ms_since(t0);
}

void batch_add(llama_batch & b, llama_token tok, llama_pos pos, llama_seq_id seq, bool logits) {
    b.token[b.n_tokens] = tok;
    b.pos[b.n_tokens] = pos;
    b.n_seq_id[b.n_tokens] = 1;
    b.seq_id[b.n_tokens][0] = seq;
    b.logits[b.n_tokens] = logits;
    b.n_tokens++;
}

// P random tokens into sequence `seq` (in batches of n_batch), then forked to the track's other answers.
double prefill(llama_context * ctx, llama_batch & b, int n_batch, const Args & a, int track, std::mt19937 & rng,
               Profile & prof) {
    double ms = 0;
    llama_seq_id seq = track * a.answers;
    for (int p0 = 0; p0 < a.prefix; p0 += n_batch) {
        b.n_tokens = 0;
        for (int p = p0; p < std::min(a.prefix, p0 + n_batch); p++)
            batch_add(b, 1000 + (int) (rng() % 100000), p, seq, p == a.prefix - 1);
        ms += decode_ms(ctx, b, prof);
    }
    llama_memory_t mem = llama_get_memory(ctx);
    for (int i = 1; i < a.answers; i++) llama_memory_seq_cp(mem, seq, seq + i, -1, -1);
    return ms;
}

std::string json_map(const std::map<std::string, double> & m, double minus_per_node,
                     const std::map<std::string, long> * counts) {
    std::ostringstream o;
    o << "{";
    bool first = true;
    for (auto & [k, v] : m) {
        double c = counts ? v - minus_per_node * counts->at(k) : v;
        o << (first ? "" : ", ") << "\"" << k << "\": " << c;
        first = false;
    }
    o << "}";
    return o.str();
}

// A plain and a profiled run of `work`, as one JSON object: true ms, profiled ms, nodes, overhead per node,
// ms per category (raw and corrected) and per op.
template <class F> std::string measure(const char * what, int reps, Profile & prof, F work) {
    double plain = 0, profiled = 0;
    prof.on = false;
    for (int i = 0; i < reps; i++) plain += work();
    prof.reset();
    prof.on = true;
    for (int i = 0; i < reps; i++) profiled += work();
    prof.on = false;
    plain /= reps;
    profiled /= reps;
    double nodes = (double) prof.nodes / reps;
    double over = nodes > 0 ? std::max(0.0, (profiled - plain) / nodes) : 0.0;
    std::map<std::string, double> cat;
    for (auto & [k, v] : prof.by_cat) cat[k] = v / reps;
    std::map<std::string, long> ncat;
    for (auto & [k, v] : prof.n_cat) ncat[k] = v / reps;
    std::map<std::string, double> op;
    for (auto & [k, v] : prof.by_op) op[k] = v / reps;
    std::ostringstream o;
    o << "\"" << what << "\": {\"plain_ms\": " << plain << ", \"profiled_ms\": " << profiled
      << ", \"nodes\": " << nodes << ", \"overhead_ms_per_node\": " << over << ", \"ms\": " << json_map(cat, 0, nullptr)
      << ", \"ms_corrected\": " << json_map(cat, over, &ncat) << ", \"ms_by_op\": " << json_map(op, 0, nullptr) << "}";
    std::fprintf(stderr, "  %-8s plain %.2f ms, profiled %.2f ms over %.0f nodes: matmul %.2f attention %.2f rest %.2f\n",
                 what, plain, profiled, nodes, cat["matmul"], cat["attention"], cat["rest"]);
    return o.str();
}

// K tracks in flight: fill their cells, then profile one more track's prefill and the decode steps over the K.
std::string run_setting(llama_model * model, const Args & a, int k, Profile & prof) {
    const int cells = a.prefix + a.answers * (a.steps * 2 + 4) + 16;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) ((k + 1) * cells + 256);
    cp.n_batch = 2048;
    cp.n_ubatch = (uint32_t) a.ubatch;
    cp.n_seq_max = (uint32_t) ((k + 1) * a.answers);
    cp.kv_unified = true;
    cp.n_threads = cp.n_threads_batch = a.threads;
    cp.flash_attn_type = a.fa == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                         : a.fa == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                         : LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.cb_eval = on_node;
    cp.cb_eval_user_data = &prof;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "could not create a context of %u cells\n", cp.n_ctx);
        std::exit(2);
    }
    std::mt19937 rng(k);
    llama_batch b = llama_batch_init(std::max(2048, (k + 1) * a.answers), 0, 1);
    prof.on = false;
    for (int t = 0; t < k; t++) prefill(ctx, b, 2048, a, t, rng, prof);
    llama_memory_t mem = llama_get_memory(ctx);
    std::string pre = measure("prefill", 1, prof, [&] {
        for (int i = 0; i < a.answers; i++)  // the extra track's cells from the run before, if any
            llama_memory_seq_rm(mem, k * a.answers + i, -1, -1);
        return prefill(ctx, b, 2048, a, k, rng, prof);
    });
    llama_pos pos = a.prefix;
    auto step = [&] {
        b.n_tokens = 0;
        for (int s = 0; s < k * a.answers; s++) batch_add(b, 1000 + (int) (rng() % 100000), pos, s, true);
        pos++;
        return decode_ms(ctx, b, prof);
    };
    step();
    step();  // warm-up: kernels for this batch shape, CUDA graph capture
    std::string st = measure("step", a.steps, prof, step);
    llama_batch_free(b);
    llama_free(ctx);
    std::ostringstream o;
    o << "{\"tracks_in_flight\": " << k << ", \"batch\": " << k * a.answers << ", \"n_ctx\": " << cp.n_ctx << ", "
      << pre << ", " << st << "}";
    return o.str();
}

Args parse(int argc, char ** argv) {
    Args a;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "-m") a.model = v;
        else if (k == "--out") a.out = v;
        else if (k == "--prefix") a.prefix = std::atoi(v.c_str());
        else if (k == "--answers") a.answers = std::atoi(v.c_str());
        else if (k == "--steps") a.steps = std::atoi(v.c_str());
        else if (k == "--ngl") a.ngl = std::atoi(v.c_str());
        else if (k == "--threads") a.threads = std::atoi(v.c_str());
        else if (k == "--ubatch") a.ubatch = std::atoi(v.c_str());
        else if (k == "--fa") a.fa = v;
        else if (k == "--tracks") {
            a.tracks.clear();
            std::stringstream ss(v);
            for (std::string x; std::getline(ss, x, ',');) a.tracks.push_back(std::atoi(x.c_str()));
        } else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            std::exit(1);
        }
    }
    if (a.model.empty() || a.tracks.empty() || a.prefix < 1 || a.answers < 1 || a.steps < 1) {
        std::fprintf(stderr, "usage: op-profile -m MODEL.gguf [--tracks 4,8,16] [--prefix N] [--out FILE]\n");
        std::exit(1);
    }
    return a;
}

}  // namespace

int main(int argc, char ** argv) {
    Args a = parse(argc, argv);
    llama_log_set([](ggml_log_level lvl, const char * text, void *) {
        if (lvl >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
    }, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = a.ngl;
    llama_model * model = llama_model_load_from_file(a.model.c_str(), mp);
    if (!model) {
        std::fprintf(stderr, "could not load %s\n", a.model.c_str());
        return 2;
    }
    Profile prof;
    std::ostringstream o;
    o << "{\"model\": \"" << a.model << "\", \"prefix\": " << a.prefix << ", \"answers\": " << a.answers
      << ", \"fa\": \"" << a.fa << "\", \"settings\": [";
    for (size_t i = 0; i < a.tracks.size(); i++) {
        std::fprintf(stderr, "op-profile: %d tracks in flight\n", a.tracks[i]);
        o << (i ? ", " : "") << run_setting(model, a, a.tracks[i], prof);
    }
    o << "]}\n";
    llama_model_free(model);
    FILE * f = a.out.empty() ? stdout : std::fopen(a.out.c_str(), "w");
    if (!f) return 2;
    std::fputs(o.str().c_str(), f);
    if (f != stdout) std::fclose(f);
    return 0;
}
