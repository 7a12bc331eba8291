// The engine's exception types. bindings.cpp maps each to the Python exception of the same meaning
// (music_flamingo/errors.py). Nothing in cpp/ may abort the process on bad input: it throws one of these.
#pragma once

#include <stdexcept>

namespace mf {

// A model/mmproj file that is missing, unreadable, not a GGUF, or the wrong kind of GGUF.
struct ModelFileError : std::runtime_error { using std::runtime_error::runtime_error; };
// Audio or prompts the engine cannot take (empty, wrong format, non-finite, too long for the context).
struct InputError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
// llama.cpp failed while running (allocation, decode).
struct EngineError : std::runtime_error { using std::runtime_error::runtime_error; };
// The caller asked to stop (Ctrl-C) between two decode steps.
struct Interrupted : std::runtime_error { using std::runtime_error::runtime_error; };

}  // namespace mf
