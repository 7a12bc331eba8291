// pybind11 glue for music_flamingo._core: binds the engine's own parameter and result types as Python classes
// (described in python/music_flamingo/_core.pyi), releases the GIL around all llama.cpp work, maps C++ errors to
// the package's Python exceptions and native log lines to Python logging.
#include "device_sampling.h"
#include "engine.h"
#include "followup.h"
#include "log_bridge.h"
#include "quantize.h"
#include "sampling.h"

#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <type_traits>
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

// The one table from the engine's exceptions to the package's Python ones (defined in music_flamingo/errors.py so
// the hierarchy is readable there): an exception instance, for a call that raises it and for a stream's on_result,
// which receives a failed track's exception as its result. Any other C++ exception from a track or a call is an
// EngineError. Call with the GIL held.
py::object python_error(const std::exception_ptr & p) {
    const char * name = "EngineError";
    std::string what;
    try {
        std::rethrow_exception(p);
    } catch (const mf::ModelFileError & e) {
        name = "ModelFileError", what = e.what();
    } catch (const mf::InputError & e) {
        name = "InvalidInputError", what = e.what();
    } catch (const mf::Interrupted &) {
        return py::reinterpret_borrow<py::object>(PyExc_KeyboardInterrupt)();
    } catch (const std::exception & e) {
        what = e.what();
    }
    return py::module_::import("music_flamingo.errors").attr(name)(what);
}

// Checked here, with the GIL held, so the message names what the caller passed. Returns a private copy: the
// caller may reuse its buffer while the engine runs.
std::vector<float> to_pcm(const py::array & audio, int sample_rate, int engine_rate) {
    // by type number, not identity: a float32 array that went through pickle (multiprocessing, Ray) has its own
    // dtype object. The type number ignores byte order: a big-endian float32 (">f4") is refused as well.
    const py::dtype dt = audio.dtype();
    if (dt.num() != py::dtype::of<float>().num() || dt.itemsize() != 4 || !dt.attr("isnative").cast<bool>()) {
        throw mf::InputError("audio must be a float32 array (got " + std::string(py::str(dt)) +
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

    mf::GenerateResult generate(py::array audio, int sample_rate, const std::vector<mf::PromptRequest> & prompts,
                                const mf::RunRequest & request) {
        std::shared_ptr<mf::Engine> eng = get();
        const mf::TrackRequest track{to_pcm(audio, sample_rate, eng->sample_rate()), prompts};
        mf::InterruptCheck check = interrupt_check();
        py::gil_scoped_release nogil;
        return eng->generate(track, request, check);
    }

    std::vector<mf::GenerateResult> generate_many(py::list tracks, int sample_rate, const mf::RunRequest & request) {
        std::shared_ptr<mf::Engine> eng = get();
        std::vector<mf::TrackRequest> reqs;
        for (auto h : tracks) {
            auto pair = h.cast<py::tuple>();
            if (pair.size() != 2) throw mf::InputError("each track is an (audio, prompts) pair");
            reqs.push_back({to_pcm(pair[0].cast<py::array>(), sample_rate, eng->sample_rate()),
                            pair[1].cast<std::vector<mf::PromptRequest>>()});
        }
        mf::InterruptCheck check = interrupt_check();
        py::gil_scoped_release nogil;
        return eng->generate_many(reqs, request, check);
    }

    // A stream of tracks sharing one list of prompts, or each with its own: next_audio() -> float32 array,
    // (array, prompts) or None (called from the engine's helper thread), on_result(index, result or exception) as
    // each track finishes (the caller's thread).
    mf::RunStats run_stream(py::object next_audio, py::object on_result, const std::vector<mf::PromptRequest> & prompts,
                            int sample_rate, const mf::RunRequest & request) {
        std::shared_ptr<mf::Engine> eng = get();
        const int engine_rate = eng->sample_rate();
        mf::NextTrack next = [&](mf::TrackRequest & out) {
            py::gil_scoped_acquire gil;
            py::object a = next_audio();
            if (a.is_none()) return false;
            if (py::isinstance<py::tuple>(a)) {
                // (audio, prompts): this track's own prompts (filled from its sidecar); `prompts` then only sizes
                // the run, and a track whose prompts need more cells than the context holds fails alone (admit)
                auto pair = a.cast<py::tuple>();
                if (pair.size() != 2) throw mf::InputError("a stream item is an array or an (audio, prompts) pair");
                out.pcm = to_pcm(pair[0].cast<py::array>(), sample_rate, engine_rate);
                out.prompts = pair[1].cast<std::vector<mf::PromptRequest>>();
                return true;
            }
            out.pcm = to_pcm(a.cast<py::array>(), sample_rate, engine_rate);
            out.prompts = prompts;
            return true;
        };
        mf::TrackDone done = [&](size_t index, mf::GenerateResult && r) {
            py::gil_scoped_acquire gil;
            if (r.error) {
                on_result(index, python_error(r.error));
            } else {
                on_result(index, std::move(r));
            }
        };
        mf::InterruptCheck check = interrupt_check();
        py::gil_scoped_release nogil;
        return eng->run_stream(next, done, prompts, request, check);
    }

    // Whether a track of n_samples with these prompts can run (the model's trained context, its sequences): the
    // InvalidInputError the run would give it, before any audio is decoded or encoded.
    void check(const std::vector<mf::PromptRequest> & prompts, size_t n_samples, const mf::RunRequest & request) {
        get()->check(prompts, n_samples, request);
    }

    mf::RunStats last_run_stats() { return get()->last_run_stats(); }
    std::map<std::string, std::string> info() { return get()->info(); }
    int sample_rate() { return get()->sample_rate(); }

private:
    std::shared_ptr<mf::Engine> get() {
        if (!engine_) throw mf::EngineError("engine is closed");
        return engine_;
    }
    std::shared_ptr<mf::Engine> engine_;
};

// --- The engine's own types as Python classes -----------------------------------------------------------------
// Typed objects instead of dicts: a misspelled field is a TypeError at the boundary instead of a silent default,
// and the defaults are read from the C++ structs, so they are stated once. python/music_flamingo/_core.pyi
// describes all of it (tests/test_core_stub.py keeps the two in step).

template <typename T> struct member_of;
template <typename C, typename T> struct member_of<T C::*> { using type = T; };

// How a field's Python value becomes the C++ value: as pybind11 casts it (Plain), or through a setting's own rule
// (below), which refuses what the engine cannot run.
template <auto M> struct Plain {
    using T = typename member_of<decltype(M)>::type;
    using py_type = T;
    static T in(T v) { return v; }
    static T out(const T & v) { return v; }
};

// --- Settings checked where they enter C++ ----------------------------------------------------------------------
// The rule for a setting with a range (a knob): it keeps one name from the CLI to C++ and is checked once, here,
// where a Python value becomes the C++ field (the struct's keyword constructor or an assignment). Its bound is the
// C++ constant, exported to Python when Python shows it. The CLI and BatchOptions build a RunRequest early (no model
// needed: validation.run_setting) so a bad value fails before the model loads, with this message; the engine then
// trusts the fields it is given. A new setting with a range: a rule like these, named in its Field line below.

// A value as a message shows it: never megabytes.
std::string shown(const py::handle & v) {
    std::string s = py::repr(v);
    return s.size() <= 80 ? s : s.substr(0, 80) + "...";
}

// tracks_in_flight: 'auto' (the engine sizes it from free memory; 0 in C++) or 1..kMaxSequences, the same values
// the CLI's --tracks-in-flight and the Python API take, passed through unchanged.
struct TracksInFlight {
    using py_type = py::object;
    static int in(const py::object & v) {
        if (py::isinstance<py::str>(v) && v.cast<std::string>() == "auto") return 0;
        if (!py::isinstance<py::bool_>(v) && PyIndex_Check(v.ptr())) {  // an int, numpy's too; not a float
            auto i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
            if (!i) throw py::error_already_set();
            int overflow = 0;
            const long long n = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
            if (!overflow && n >= 1 && n <= mf::kMaxSequences) return (int) n;
        }
        throw mf::InputError("tracks_in_flight must be 'auto' or an integer in 1.." +
                             std::to_string(mf::kMaxSequences) + ", got " + shown(v));
    }
    static py::object out(int n) { return n == 0 ? py::object(py::str("auto")) : py::object(py::int_(n)); }
};

// max_audio_seconds: the longest track a stream expects (sizes its context); 0: 10 minutes.
struct MaxAudioSeconds {
    using py_type = double;
    static double in(double v) {
        if (!(v >= 0) || v > 1e7) {
            throw mf::InputError("max_audio_seconds must be 0 (10 minutes) or a positive number of seconds up to "
                                 "1e7, got " + shown(py::float_(v)));
        }
        return v;
    }
    static double out(double v) { return v; }
};

// live_answers: admit past tracks_in_flight while fewer answers than this are live; 0: off.
struct LiveAnswers {
    using py_type = int;
    static int in(int v) {
        if (v < 0 || v > mf::kMaxSequences) {
            throw mf::InputError("live_answers must be 0 (off) or an integer in 1.." + std::to_string(mf::kMaxSequences) +
                                 ", got " + std::to_string(v));
        }
        return v;
    }
    static int out(int v) { return v; }
};

// sampling_on_device for one run: 'auto', 'on', 'off' (device_sampling.h names them), or None: the engine's.
struct SamplingOnDevice {
    using py_type = std::optional<std::string>;
    static std::optional<std::string> in(std::optional<std::string> v) {
        if (v) mf::parse_device_sampling(*v);  // throws InputError naming the setting
        return v;
    }
    static std::optional<std::string> out(const std::optional<std::string> & v) { return v; }
};

template <typename C, auto M, typename Rule>
void bind_field(py::class_<C> & cls, const char * name) {
    if constexpr (std::is_same_v<Rule, Plain<M>>) {
        cls.def_readwrite(name, M);
    } else {
        cls.def_property(name, [](const C & c) { return Rule::out(c.*M); },
                         [](C & c, typename Rule::py_type v) { c.*M = Rule::in(std::move(v)); });
    }
}

// One field of a struct bound with a keyword constructor: its member pointer, its Python name and its rule.
template <auto M, typename Rule = Plain<M>> struct Field { const char * name; };

// Binds C's fields as read-write attributes and a keyword-only constructor over them, each argument defaulting to
// what a default-constructed C holds. A field with a rule is checked by it in the constructor and on assignment.
template <typename C, auto... M, typename... Rule>
void bind_fields(py::class_<C> & cls, Field<M, Rule>... f) {
    const C dflt{};
    cls.def(py::init([](typename Rule::py_type... v) {
                C c;
                ((c.*M = Rule::in(std::move(v))), ...);
                return c;
            }),
            py::kw_only(), (py::arg(f.name) = Rule::out(dflt.*M))...);
    (bind_field<C, M, Rule>(cls, f.name), ...);
}

// A prompt and its follow-ups (cpp/types.h): the questions about a track, a known answer for the catch-up pass.
void bind_prompts(py::module_ & m) {
    using S = mf::SamplingParams;
    using F = mf::FollowUpRequest;
    const F fdflt{};
    py::class_<F>(m, "FollowUpRequest", "A question asked after a prompt's answer, in the same conversation.")
        .def(py::init([](std::string text, int max_tokens, const S & sampling) {
                 return F{std::move(text), max_tokens, sampling};
             }),
             py::arg("text"), py::kw_only(), py::arg("max_tokens") = fdflt.max_tokens,
             py::arg("sampling") = fdflt.sampling)
        .def_readwrite("text", &F::text)
        .def_readwrite("max_tokens", &F::max_tokens)
        .def_readwrite("sampling", &F::sampling);

    using P = mf::PromptRequest;
    const P dflt{};
    py::class_<P>(m, "PromptRequest", "One question about a track: its text, token limit and sampling; its "
                                      "follow-ups; a known answer (not generated: only the follow-ups are).")
        .def(py::init([](std::string text, int max_tokens, const S & sampling, std::vector<F> followups,
                         std::optional<std::string> answer, std::vector<int32_t> answer_tokens) {
                 P p{std::move(text), max_tokens, sampling, std::move(followups)};
                 p.answered = answer.has_value() || !answer_tokens.empty();
                 p.answer = answer.value_or("");
                 p.answer_tokens = std::move(answer_tokens);
                 return p;
             }),
             py::arg("text"), py::kw_only(), py::arg("max_tokens") = dflt.max_tokens,
             py::arg("sampling") = dflt.sampling, py::arg("followups") = std::vector<F>{},
             py::arg("answer") = py::none(), py::arg("answer_tokens") = std::vector<int32_t>{})
        .def_readwrite("text", &P::text)
        .def_readwrite("max_tokens", &P::max_tokens)
        .def_readwrite("sampling", &P::sampling)
        .def_readwrite("followups", &P::followups)
        .def_readonly("answered", &P::answered)
        .def_readonly("answer", &P::answer)
        .def_readonly("answer_tokens", &P::answer_tokens);
}

// What a caller gives the engine: keyword-constructed classes whose defaults are the C++ structs'.
void bind_types(py::module_ & m) {
    using S = mf::SamplingParams;
    py::class_<S> sampling(m, "SamplingParams", "One prompt's sampling settings (cpp/types.h).");
    // A new sampling setting is one Field line here, after its field in mf::SamplingParams (types.h); then the
    // Python Prompt's field (datatypes.py: Prompt.to_native passes every sampling field by name) and _core.pyi.
    bind_fields(sampling,
                Field<&S::temperature>{"temperature"},
                Field<&S::top_p>{"top_p"},
                Field<&S::top_k>{"top_k"},
                Field<&S::min_p>{"min_p"},
                Field<&S::repeat_penalty>{"repeat_penalty"},
                Field<&S::repeat_last_n>{"repeat_last_n"},
                Field<&S::seed>{"seed"},
                Field<&S::ignore_eos>{"ignore_eos"});
    bind_prompts(m);

    py::enum_<mf::Framing>(m, "Framing", "How the audio is put in front of the LLM (cpp/types.h).")
        .value("Mtmd", mf::Framing::Mtmd)
        .value("ReferenceTrim", mf::Framing::ReferenceTrim)
        .value("ReferenceTail", mf::Framing::ReferenceTail)
        .value("Reference", mf::Framing::Reference);

    py::enum_<mf::FlashAttn>(m, "FlashAttn", "Flash attention for the text model and the audio encoder.")
        .value("Auto", mf::FlashAttn::Auto)
        .value("Off", mf::FlashAttn::Off)
        .value("On", mf::FlashAttn::On);

    using CP = mf::ChatPieces;
    py::class_<CP> chat(m, "ChatPieces", "The chat around the audio and the question: head <audio> mid <question> "
                                         "tail, rendered from the model's template (cpp/types.h); next_turn (between an answer and the "
                                         "next question) for follow-ups.");
    bind_fields(chat, Field<&CP::head>{"head"}, Field<&CP::mid>{"mid"}, Field<&CP::tail>{"tail"},
                Field<&CP::next_turn>{"next_turn"});

    using RQ = mf::RunRequest;
    py::class_<RQ> request(m, "RunRequest", "One run's settings (cpp/types.h); defaults are the engine's.");
    // A new setting is one Field line here, after its field in mf::RunRequest; then _core.pyi. A setting with a range
    // names its rule (see "Settings checked where they enter C++" above), and nothing else checks it again.
    bind_fields(request,
                Field<&RQ::system_prompt>{"system_prompt"},
                Field<&RQ::chat>{"chat"},
                Field<&RQ::render_special>{"render_special"},
                Field<&RQ::framing>{"framing"},
                Field<&RQ::tracks_in_flight, TracksInFlight>{"tracks_in_flight"},
                Field<&RQ::max_audio_seconds, MaxAudioSeconds>{"max_audio_seconds"},
                Field<&RQ::profile>{"profile"},
                Field<&RQ::prepare_ahead>{"prepare_ahead"},
                Field<&RQ::prefill_beside>{"prefill_beside"},
                Field<&RQ::live_answers, LiveAnswers>{"live_answers"},
                Field<&RQ::debug>{"debug"},
                Field<&RQ::sampling_on_device, SamplingOnDevice>{"sampling_on_device"});
}

// The engine's answers and stats: read-only classes.
void bind_results(py::module_ & m) {
    using G = mf::GenerateStats;
    py::class_<G>(m, "GenerateStats", "Where the time of one track went (read-only).")
        .def_readonly("audio_seconds", &G::audio_seconds)
        .def_readonly("audio_chunks", &G::audio_chunks)
        .def_readonly("audio_tokens", &G::audio_tokens)
        .def_readonly("prefix_tokens", &G::prefix_tokens)
        .def_readonly("prompt_tokens", &G::prompt_tokens)
        .def_readonly("n_ctx", &G::n_ctx)
        .def_readonly("mel_ms", &G::mel_ms)
        .def_readonly("encode_ms", &G::encode_ms)
        .def_readonly("prefill_ms", &G::prefill_ms)
        .def_readonly("decode_ms", &G::decode_ms)
        .def_readonly("tokens_generated", &G::tokens_generated)
        .def_readonly("decode_tokens_per_s", &G::decode_tokens_per_s)
        .def_readonly("total_ms", &G::total_ms);

    using O = mf::PromptOutput;
    py::class_<O>(m, "PromptOutput", "One prompt's answer (read-only).")
        // bytes: a cut at max_tokens may split a UTF-8 character; the Python layer decodes
        .def_property_readonly("text", [](const O & o) { return py::bytes(o.text); })
        .def_readonly("tokens", &O::tokens)
        .def_readonly("stop_reason", &O::stop_reason)
        .def_readonly("followups", &O::followups);

    using R = mf::GenerateResult;
    py::class_<R>(m, "GenerateResult", "One track's answers and stats (read-only); the debug arrays are empty "
                                       "unless asked for.")
        .def_readonly("outputs", &R::outputs)
        .def_readonly("stats", &R::stats)
        .def_property_readonly("audio_embd", [](const R & r) {
            const py::ssize_t rows = r.stats.audio_tokens, n = (py::ssize_t) r.audio_embd.size();
            return py::array_t<float>({rows, rows ? n / rows : 0}, r.audio_embd.data());
        })
        .def_property_readonly("first_logits", [](const R & r) {
            return py::array_t<float>((py::ssize_t) r.first_logits.size(), r.first_logits.data());
        })
        .def_readonly("prompt_tokens", &R::prompt_tokens);

    using RS = mf::RunStats;
    py::class_<RS>(m, "RunStats", "Where the time of one run went, for benchmarks (read-only).")
        .def_readonly("tracks", &RS::tracks)
        .def_readonly("tracks_failed", &RS::tracks_failed)
        .def_readonly("tracks_in_flight", &RS::tracks_in_flight)
        .def_readonly("peak_in_flight", &RS::peak_in_flight)
        .def_readonly("n_ctx", &RS::n_ctx)
        .def_readonly("n_seq", &RS::n_seq)
        .def_readonly("kv_budget_mb", &RS::kv_budget_mb)
        .def_readonly("steps", &RS::steps)
        .def_readonly("step_tokens", &RS::step_tokens)
        .def_readonly("decode_ms", &RS::decode_ms)
        .def_readonly("sample_ms", &RS::sample_ms)
        .def_readonly("host_ms", &RS::host_ms)
        .def_readonly("admit_ms", &RS::admit_ms)
        .def_readonly("prefill_beside", &RS::prefill_beside)
        .def_readonly("prefill_beside_ms", &RS::prefill_beside_ms)
        .def_readonly("prefill_fallbacks", &RS::prefill_fallbacks)
        .def_readonly("live_answers", &RS::live_answers)
        .def_readonly("wait_ms", &RS::wait_ms)
        .def_readonly("prepare_ms", &RS::prepare_ms)
        .def_readonly("wall_ms", &RS::wall_ms)
        .def_readonly("sampling_threads", &RS::sampling_threads)
        .def_readonly("device_sampled", &RS::device_sampled)
        .def_readonly("sampler_attaches", &RS::sampler_attaches)
        .def_readonly("step_batch", &RS::step_batch)
        .def_readonly("step_host_ms", &RS::step_host_ms)
        .def_readonly("step_decode_ms", &RS::step_decode_ms);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "llama.cpp mtmd engine for Music Flamingo (private; use the music_flamingo package)";
    mf::logbridge::install();

    // Every exception the engine throws reaches Python through python_error(); pybind11's own (a failed cast, a
    // Python error raised in a callback) keep pybind11's translation.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const py::builtin_exception &) {
            throw;
        } catch (const std::exception &) {
            py::object e = python_error(p);
            PyErr_SetObject((PyObject *) Py_TYPE(e.ptr()), e.ptr());
        }
    });

    bind_types(m);
    bind_results(m);
    m.attr("MAX_TRACKS_IN_FLIGHT") = mf::kMaxSequences;  // tracks_in_flight's bound (TracksInFlight)

    const mf::EngineParams dflt{};
    py::class_<PyEngine>(m, "Engine")
        .def(py::init([](const std::string & model_path, const std::string & mmproj_path, int n_gpu_layers,
                         bool mmproj_use_gpu, int n_threads, mf::FlashAttn flash_attn, int n_ctx, int n_batch,
                         int n_ubatch, int n_seq_max, const std::string & kv_type, bool warmup,
                         int n_sampling_threads, double memory_budget_mb, bool prepare_ahead,
                         const std::string & kv_layout, const std::string & sampling_on_device,
                         std::optional<bool> prefill_beside) {
                 mf::EngineParams p;
                 p.model_path = model_path; p.mmproj_path = mmproj_path; p.n_gpu_layers = n_gpu_layers;
                 p.mmproj_use_gpu = mmproj_use_gpu; p.n_threads = n_threads; p.flash_attn = flash_attn;
                 p.n_ctx = n_ctx; p.n_batch = n_batch; p.n_ubatch = n_ubatch; p.n_seq_max = n_seq_max;
                 p.kv_type = kv_type; p.warmup = warmup; p.n_sampling_threads = n_sampling_threads;
                 p.memory_budget_mb = memory_budget_mb; p.prepare_ahead = prepare_ahead;
                 p.kv_layout = kv_layout; p.sampling_on_device = sampling_on_device;
                 p.prefill_beside = prefill_beside;
                 return std::make_unique<PyEngine>(p);
             }),
             py::arg("model_path"), py::arg("mmproj_path"), py::kw_only(),
             py::arg("n_gpu_layers") = dflt.n_gpu_layers, py::arg("mmproj_use_gpu") = dflt.mmproj_use_gpu,
             py::arg("n_threads") = dflt.n_threads, py::arg("flash_attn") = dflt.flash_attn,
             py::arg("n_ctx") = dflt.n_ctx, py::arg("n_batch") = dflt.n_batch, py::arg("n_ubatch") = dflt.n_ubatch,
             py::arg("n_seq_max") = dflt.n_seq_max, py::arg("kv_type") = dflt.kv_type,
             py::arg("warmup") = dflt.warmup, py::arg("n_sampling_threads") = dflt.n_sampling_threads,
             py::arg("memory_budget_mb") = dflt.memory_budget_mb, py::arg("prepare_ahead") = dflt.prepare_ahead,
             py::arg("kv_layout") = dflt.kv_layout, py::arg("sampling_on_device") = dflt.sampling_on_device,
             py::arg("prefill_beside") = dflt.prefill_beside)
        .def("generate", &PyEngine::generate, py::arg("audio"), py::arg("sample_rate"), py::arg("prompts"),
             py::kw_only(), py::arg("request") = mf::RunRequest{},
             "Encode the audio once and answer every prompt from the shared prefix. GIL released while running.")
        .def("generate_many", &PyEngine::generate_many, py::arg("tracks"), py::arg("sample_rate"), py::kw_only(),
             py::arg("request") = mf::RunRequest{},
             "Several (audio, prompts) tracks with continuous batching: up to request.tracks_in_flight tracks per "
             "decode step ('auto': sized from free memory). Raises the first failing track's error after all ran.")
        .def("run_stream", &PyEngine::run_stream, py::arg("next_audio"), py::arg("on_result"), py::arg("prompts"),
             py::arg("sample_rate"), py::kw_only(), py::arg("request") = mf::RunRequest{},
             "Continuous batching over a stream: next_audio() -> array, (array, prompts) or None (helper thread), "
             "on_result(index, result) per finished track, the exception as its result when it failed. Returns the "
             "run's stats.")
        .def("check", &PyEngine::check, py::arg("prompts"), py::arg("n_samples"), py::kw_only(),
             py::arg("request") = mf::RunRequest{},
             "Raise the InvalidInputError a track of n_samples with these prompts would fail with (the model's "
             "trained context, its sequences), before any audio is decoded or memory allocated.")
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

    // music-flamingo convert --quant (cpp/quantize.h)
    m.def("quantize_model", &mf::quantize_model, py::arg("src"), py::arg("dst"), py::arg("ftype"),
          py::arg("n_threads") = 0, py::arg("imatrix") = mf::ImportanceMatrix{},
          py::call_guard<py::gil_scoped_release>(),
          "Write dst: the text GGUF src quantized to llama_ftype ftype by llama.cpp (imatrix: [(tensor, values)]).");
}
