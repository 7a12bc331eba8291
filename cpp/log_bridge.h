// Routes llama.cpp / ggml / mtmd log messages to one sink (the package's Python logger, set by bindings.cpp).
//
// llama.cpp logs in fragments (a message may arrive in pieces, GGML_LOG_LEVEL_CONT continues the previous one)
// and from worker threads. Fragments are joined per thread into whole lines; lines below the minimum level are
// dropped here, in C++, so a quiet logger costs nothing. With no sink set, lines are dropped (never printed).
#pragma once

#include <string>

namespace mf::logbridge {

// level: 1 debug, 2 info, 3 warn, 4 error (ggml_log_level). Called outside any lock of ours.
using Sink = void (*)(int level, const std::string & line);

void install();                 // point llama.cpp, ggml and mtmd at our callback (idempotent)
void set_sink(Sink sink);       // nullptr: drop everything (used at interpreter exit)
void set_min_level(int level);  // lines below are dropped before reaching the sink
int min_level();

}  // namespace mf::logbridge
