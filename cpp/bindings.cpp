// pybind11 glue for music_flamingo._core: converts Python values to the engine's types, releases the GIL around
// all llama.cpp work, maps C++ errors to the package's Python exceptions and native log lines to Python logging.
#include "engine.h"
#include "log_bridge.h"
#include "sampling.h"

#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include <chrono>
#include <cstring>
#include <memory>

namespace py = pybind11;

namespace {

// The Python callable that receives (level, line). Leaked on purpose: it must outlive static destructors, and
// the sink is switched off (set_log_callback(None)) by an atexit hook before the interpreter finalizes.
py::object * g_log_callable = nullptr;

void python_sink(int level, const std::string & line) {
    if (!Py_IsInitialized() || _Py_IsFinalizing()) return;
    py::gil_scoped_acquire gil;
    if (!g_log_callable) return;
    try {
        (*g_log_callable)(level, py::bytes(line));
    } catch (py::error_already_set & e) {
        e.discard_as_unraisable("music_flamingo native log callback");
    }
}

void set_log_callback(py::object cb) {
    mf::logbridge::set_sink(nullptr);
    if (cb.is_none()) return;  // the old callable stays leaked: a worker thread may still be inside it
    g_log_callable = new py::object(std::move(cb));
    mf::logbridge::set_sink(python_sink);
}

// Exceptions are defined in Python (music_flamingo/errors.py) so the hierarchy is readable there.
[[noreturn]] void raise_py(const char * name, const char * what) {
    py::object cls = py::module_::import("music_flamingo.errors").attr(name);
    PyErr_SetString(cls.ptr(), what);
    throw py::error_already_set();
}

template <typename T>
T get_or(const py::dict & d, const char * key, T dflt) {
    return d.contains(key) && !d[key].is_none() ? d[key].cast<T>() : dflt;
}

mf::PromptRequest to_prompt(const py::handle & h) {
    py::dict d = py::reinterpret_borrow<py::dict>(h);
    mf::PromptRequest p;
    p.text = d["text"].cast<std::string>();
    p.max_tokens = get_or<int>(d, "max_tokens", p.max_tokens);
    auto & s = p.sampling;
    s.temperature = get_or<float>(d, "temperature", s.temperature);
    s.top_p = get_or<float>(d, "top_p", s.top_p);
    s.top_k = get_or<int>(d, "top_k", s.top_k);
    s.min_p = get_or<float>(d, "min_p", s.min_p);
    s.repeat_penalty = get_or<float>(d, "repeat_penalty", s.repeat_penalty);
    s.repeat_last_n = get_or<int>(d, "repeat_last_n", s.repeat_last_n);
    s.seed = get_or<uint32_t>(d, "seed", s.seed);
    s.ignore_eos = get_or<bool>(d, "ignore_eos", s.ignore_eos);
    return p;
}

py::dict stats_dict(const mf::GenerateStats & st) {
    py::dict d;
    d["audio_seconds"] = st.audio_seconds;
    d["audio_chunks"] = st.audio_chunks;
    d["audio_tokens"] = st.audio_tokens;
    d["prefix_tokens"] = st.prefix_tokens;
    d["prompt_tokens"] = st.prompt_tokens;
    d["n_ctx"] = st.n_ctx;
    d["mel_ms"] = st.mel_ms;
    d["encode_ms"] = st.encode_ms;
    d["prefill_ms"] = st.prefill_ms;
    d["decode_ms"] = st.decode_ms;
    d["tokens_generated"] = st.tokens_generated;
    d["decode_tokens_per_s"] = st.decode_tokens_per_s;
    d["total_ms"] = st.total_ms;
    return d;
}

mf::Framing to_framing(int framing) {
    if (framing < 0 || framing > 3) {
        throw mf::InputError("framing must be 0 (mtmd), 1 (reference trim), 2 (reference tail) or 3 (reference)");
    }
    return static_cast<mf::Framing>(framing);
}

// None, or the (head, mid, tail) the Python layer rendered from the model's chat template.
std::optional<mf::ChatPieces> to_chat(const py::object & chat) {
    if (chat.is_none()) return std::nullopt;
    auto t = chat.cast<std::tuple<std::string, std::string, std::string>>();
    return mf::ChatPieces{std::get<0>(t), std::get<1>(t), std::get<2>(t)};
}

// Checked here, with the GIL held, so the message names what the caller passed. Returns a private copy: the
// caller may reuse its buffer while the engine runs.
std::vector<float> to_pcm(const py::array & audio, int sample_rate, int engine_rate) {
    // by type number, not identity: a float32 array that went through pickle (multiprocessing, Ray) has its own
    // dtype object
    if (audio.dtype().num() != py::dtype::of<float>().num() || audio.dtype().itemsize() != 4) {
        throw mf::InputError("audio must be a float32 array (got " + std::string(py::str(audio.dtype())) +
                             "); music_flamingo.audio.load_audio() converts anything else");
    }
    if (audio.ndim() != 1) {
        throw mf::InputError("audio must be mono, a 1-D array (got " + std::to_string(audio.ndim()) + " dimensions)");
    }
    if (sample_rate != engine_rate) {
        throw mf::InputError("audio must be sampled at " + std::to_string(engine_rate) + " Hz (got " +
                             std::to_string(sample_rate) + ")");
    }
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(audio);
    return std::vector<float>(a.data(), a.data() + a.size());
}

std::vector<mf::PromptRequest> to_prompts(const py::list & prompts) {
    std::vector<mf::PromptRequest> reqs;
    for (auto h : prompts) reqs.push_back(to_prompt(h));
    return reqs;
}

// Ctrl-C: only the main thread receives signals; check them at most every 100 ms (a GIL round trip each).
mf::InterruptCheck interrupt_check() {
    const bool main_thread = PyThread_get_thread_ident() ==
                             py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    if (!main_thread) return nullptr;
    auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    return [last]() {
        auto now = std::chrono::steady_clock::now();
        if (now - *last < std::chrono::milliseconds(100)) return false;
        *last = now;
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) { PyErr_Clear(); return true; }
        return false;
    };
}

py::dict result_dict(const mf::GenerateResult & r) {
    py::list outs;
    for (const auto & o : r.outputs) {
        py::dict d;
        d["text"] = py::bytes(o.text);
        d["tokens"] = o.tokens;
        d["stop_reason"] = o.stop_reason;
        outs.append(d);
    }
    py::dict out;
    out["outputs"] = outs;
    out["stats"] = stats_dict(r.stats);
    out["error_kind"] = r.error_kind;
    out["error"] = r.error;
    return out;
}

py::dict run_stats_dict(const mf::RunStats & s) {
    py::dict d;
    d["tracks"] = s.tracks;
    d["tracks_failed"] = s.tracks_failed;
    d["tracks_in_flight"] = s.tracks_in_flight;
    d["peak_in_flight"] = s.peak_in_flight;
    d["n_ctx"] = s.n_ctx;
    d["n_seq"] = s.n_seq;
    d["kv_budget_mb"] = s.kv_budget_mb;
    d["steps"] = s.steps;
    d["step_tokens"] = s.step_tokens;
    d["decode_ms"] = s.decode_ms;
    d["sample_ms"] = s.sample_ms;
    d["host_ms"] = s.host_ms;
    d["admit_ms"] = s.admit_ms;
    d["wait_ms"] = s.wait_ms;
    d["prepare_ms"] = s.prepare_ms;
    d["wall_ms"] = s.wall_ms;
    d["sampling_threads"] = s.sampling_threads;
    d["step_batch"] = s.step_batch;
    d["step_host_ms"] = s.step_host_ms;
    d["step_decode_ms"] = s.step_decode_ms;
    return d;
}

// Owns the engine. Every call holds its own reference for as long as it runs, so close() racing a running call
// (another thread) frees the engine when that call returns instead of under it. The GIL orders close() against
// the start of a call: both take the reference while holding it.
class PyEngine {
public:
    explicit PyEngine(const mf::EngineParams & p) {
        py::gil_scoped_release nogil;
        engine_ = std::make_shared<mf::Engine>(p);
    }

    void close() {
        std::shared_ptr<mf::Engine> e = std::move(engine_);
        py::gil_scoped_release nogil;  // the destructor waits for a running call (the engine's mutex)
        e.reset();
    }

    py::dict generate(py::array audio, int sample_rate, py::list prompts, const std::string & system_prompt,
                      bool render_special, int framing, bool debug, py::object chat) {
        std::shared_ptr<mf::Engine> eng = get();
        const mf::Framing fr = to_framing(framing);
        const std::optional<mf::ChatPieces> pieces = to_chat(chat);
        std::vector<float> pcm = to_pcm(audio, sample_rate, eng->sample_rate());
        std::vector<mf::PromptRequest> reqs = to_prompts(prompts);
        mf::InterruptCheck check = interrupt_check();
        mf::GenerateResult r;
        {
            py::gil_scoped_release nogil;
            r = eng->generate(pcm, reqs, system_prompt, render_special, fr, debug, check, pieces);
        }
        py::dict out = result_dict(r);
        if (debug) {
            const py::ssize_t n_embd = r.stats.audio_tokens ? (py::ssize_t) (r.audio_embd.size() / r.stats.audio_tokens) : 0;
            out["audio_embd"] = py::array_t<float>({(py::ssize_t) r.stats.audio_tokens, n_embd}, r.audio_embd.data());
            out["first_logits"] = py::array_t<float>((py::ssize_t) r.first_logits.size(), r.first_logits.data());
            out["prompt_tokens"] = r.prompt_tokens;
        }
        return out;
    }

    py::list generate_many(py::list tracks, int sample_rate, const std::string & system_prompt, bool render_special,
                           int framing, int max_in_flight, py::object chat) {
        std::shared_ptr<mf::Engine> eng = get();
        const mf::Framing fr = to_framing(framing);
        const std::optional<mf::ChatPieces> pieces = to_chat(chat);
        std::vector<mf::TrackRequest> reqs;
        for (auto h : tracks) {
            auto pair = h.cast<py::tuple>();
            if (pair.size() != 2) throw mf::InputError("each track is an (audio, prompts) pair");
            reqs.push_back({to_pcm(pair[0].cast<py::array>(), sample_rate, eng->sample_rate()),
                            to_prompts(pair[1].cast<py::list>())});
        }
        mf::InterruptCheck check = interrupt_check();
        std::vector<mf::GenerateResult> rs;
        {
            py::gil_scoped_release nogil;
            rs = eng->generate_many(reqs, system_prompt, render_special, fr, max_in_flight, false, check, pieces);
        }
        py::list out;
        for (const auto & r : rs) out.append(result_dict(r));
        return out;
    }

    // A stream of tracks sharing one list of prompts: next_audio() -> float32 array or None (called from the
    // engine's helper thread), on_result(index, result) as each track finishes (in the caller's thread).
    py::dict run_stream(py::object next_audio, py::object on_result, py::list prompts, int sample_rate,
                        const std::string & system_prompt, bool render_special, int framing, int tracks_in_flight,
                        double max_audio_seconds, bool profile, int prepare_ahead, py::object chat) {
        std::shared_ptr<mf::Engine> eng = get();
        mf::RunOptions o;
        o.system_prompt = system_prompt;
        o.chat = to_chat(chat);
        o.render_special = render_special;
        o.framing = to_framing(framing);
        o.tracks_in_flight = std::max(0, tracks_in_flight);
        o.profile = profile;
        o.prepare_ahead = prepare_ahead;
        o.interrupted = interrupt_check();
        const std::vector<mf::PromptRequest> reqs = to_prompts(prompts);
        o.max_prompts = std::max<int>(1, (int) reqs.size());
        o.max_text_cells = eng->prompts_cells(reqs, o, &o.max_prompt_cells);
        if (max_audio_seconds > 0) o.max_audio_samples = (size_t) (max_audio_seconds * eng->sample_rate());
        const int engine_rate = eng->sample_rate();
        mf::NextTrack next = [&](mf::TrackRequest & out) {
            py::gil_scoped_acquire gil;
            py::object a = next_audio();
            if (a.is_none()) return false;
            out.pcm = to_pcm(a.cast<py::array>(), sample_rate, engine_rate);
            out.prompts = reqs;
            return true;
        };
        mf::TrackDone done = [&](size_t index, mf::GenerateResult && r) {
            py::gil_scoped_acquire gil;
            on_result(index, result_dict(r));
        };
        mf::RunStats st;
        {
            py::gil_scoped_release nogil;
            st = eng->run(next, done, o);
        }
        return run_stats_dict(st);
    }

    py::dict last_run_stats() { return run_stats_dict(get()->last_run_stats()); }
    std::map<std::string, std::string> info() { return get()->info(); }
    int sample_rate() { return get()->sample_rate(); }

private:
    std::shared_ptr<mf::Engine> get() {
        if (!engine_) throw mf::EngineError("engine is closed");
        return engine_;
    }
    std::shared_ptr<mf::Engine> engine_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "llama.cpp mtmd engine for Music Flamingo (private; use the music_flamingo package)";
    mf::logbridge::install();

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const mf::ModelFileError & e) {
            raise_py("ModelFileError", e.what());
        } catch (const mf::InputError & e) {
            raise_py("InvalidInputError", e.what());
        } catch (const mf::Interrupted &) {
            PyErr_SetNone(PyExc_KeyboardInterrupt);
            throw py::error_already_set();
        } catch (const mf::EngineError & e) {
            raise_py("EngineError", e.what());
        }
    });

    py::class_<PyEngine>(m, "Engine")
        .def(py::init([](const std::string & model_path, const std::string & mmproj_path, int n_gpu_layers,
                         bool mmproj_use_gpu, int n_threads, int flash_attn, int n_ctx, int n_batch, int n_ubatch,
                         int n_seq_max, const std::string & kv_type, bool warmup, int n_sampling_threads,
                         double memory_budget_mb, bool prepare_ahead, bool kv_unified) {
                 mf::EngineParams p;
                 p.model_path = model_path; p.mmproj_path = mmproj_path; p.n_gpu_layers = n_gpu_layers;
                 p.mmproj_use_gpu = mmproj_use_gpu; p.n_threads = n_threads; p.flash_attn = flash_attn;
                 p.n_ctx = n_ctx; p.n_batch = n_batch; p.n_ubatch = n_ubatch; p.n_seq_max = n_seq_max;
                 p.kv_type = kv_type; p.warmup = warmup; p.n_sampling_threads = n_sampling_threads;
                 p.memory_budget_mb = memory_budget_mb; p.prepare_ahead = prepare_ahead; p.kv_unified = kv_unified;
                 return std::make_unique<PyEngine>(p);
             }),
             py::arg("model_path"), py::arg("mmproj_path"), py::arg("n_gpu_layers") = -1,
             py::arg("mmproj_use_gpu") = true, py::arg("n_threads") = 0, py::arg("flash_attn") = -1,
             py::arg("n_ctx") = 0, py::arg("n_batch") = 2048, py::arg("n_ubatch") = 1024, py::arg("n_seq_max") = 8,
             py::arg("kv_type") = "f16", py::arg("warmup") = true, py::arg("n_sampling_threads") = 0,
             py::arg("memory_budget_mb") = 0.0, py::arg("prepare_ahead") = true, py::arg("kv_unified") = true)
        .def("generate", &PyEngine::generate, py::arg("audio"), py::arg("sample_rate"), py::arg("prompts"),
             py::arg("system_prompt") = "", py::arg("render_special") = false, py::arg("framing") = 0,
             py::arg("debug") = false, py::arg("chat") = py::none(),
             "Encode the audio once and answer every prompt from the shared prefix. GIL released while running. "
             "chat: (head, mid, tail) rendered from the model's chat template, required by every framing but 0.")
        .def("generate_many", &PyEngine::generate_many, py::arg("tracks"), py::arg("sample_rate"),
             py::arg("system_prompt") = "", py::arg("render_special") = false, py::arg("framing") = 0,
             py::arg("max_in_flight") = 0, py::arg("chat") = py::none(),
             "Several (audio, prompts) tracks with continuous batching: up to max_in_flight tracks per decode step "
             "(0: automatic). Raises the first failing track's error after all ran.")
        .def("run_stream", &PyEngine::run_stream, py::arg("next_audio"), py::arg("on_result"), py::arg("prompts"),
             py::arg("sample_rate"), py::arg("system_prompt") = "", py::arg("render_special") = false,
             py::arg("framing") = 0, py::arg("tracks_in_flight") = 0, py::arg("max_audio_seconds") = 0.0,
             py::arg("profile") = false, py::arg("prepare_ahead") = -1, py::arg("chat") = py::none(),
             "Continuous batching over a stream: next_audio() -> array or None (helper thread), on_result(index, "
             "result) per finished track; a failing track is reported in its result. Returns the run's stats.")
        .def("last_run_stats", &PyEngine::last_run_stats, "Where the last run's time went (steps, host, decode).")
        .def("info", &PyEngine::info)
        .def_property_readonly("sample_rate", &PyEngine::sample_rate)
        .def("close", &PyEngine::close, "Free the model, the audio encoder and the context now.");

    m.def("set_force_full_sampling", &mf::SequenceSampler::set_force_full_path, py::arg("on"),
          "Tests/benchmarks: hand every sampler all n_vocab candidates (llama_sampler_sample's path).");
    m.def("build_info", &mf::build_info, "llama.cpp commit and source, compiled backends, CPU features.");
    m.def("list_devices", &mf::list_devices, "Devices ggml found: name, description, type, memory.");
    m.def("set_log_callback", &set_log_callback, py::arg("callback"),
          "callback(level: int, line: bytes) receives native log lines; None drops them.");
    m.def("set_log_level", &mf::logbridge::set_min_level, py::arg("level"),
          "Lowest ggml log level forwarded: 1 debug, 2 info, 3 warn, 4 error.");
}
