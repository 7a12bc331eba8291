// Checks a GGUF file's header before llama.cpp loads it, so a wrong file is a clear Python exception
// (mf::ModelFileError) instead of a cryptic log line or an abort deep inside the loader.
#pragma once

#include <string>

namespace mf {

// The text model: readable, a GGUF, and not an mmproj ("clip") file.
void check_text_model_file(const std::string & path);

// The mmproj: readable, a GGUF, a "clip" file with an audio encoder whose projector is `musicflamingo`.
void check_mmproj_file(const std::string & path);

}  // namespace mf
