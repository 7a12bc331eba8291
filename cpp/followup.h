// Follow-up questions (issue 20: the short summaries asked of the resident model) and known answers (the catch-up
// pass). Everything the engine does for them is here; BatchRun calls in at four points:
//   prepare_one  plan_followups(): each follow-up's tokens, the cells and sequences they take
//   admit        open_followup_slots(): one waiting slot (sequence, sampler, limit) per follow-up;
//                take_answer() instead of sampling a prompt whose answer is known
//   each step    start_followups(): a finished answer's follow-ups start (below)
//   retire       nest_followups(): the follow-ups' outputs into their prompt's PromptOutput::followups
//
// A follow-up continues its prompt's sequence: when the answer ends, the sequence is copied (llama_memory_seq_cp:
// in a unified cache the cells are shared, nothing is recomputed) to the follow-up's own sequence, and there
// [the answer's last token if it was cut at max_tokens] + next_turn + question + tail are decoded; its first token
// is sampled at once and it decodes with every other sequence from the next step on. Greedy with flash attention
// off this equals a fresh conversation holding the same answer tokens (tests/test_followups.py).
#pragma once

#include "types.h"

#include <cstdint>
#include <vector>

struct llama_vocab;

namespace mf {

struct FollowUpPlan {
    std::vector<int> parent;                 // per follow-up: the index of the prompt it follows
    std::vector<int> nth;                    // per follow-up: its index in that prompt's followups
    std::vector<std::vector<int32_t>> feed;  // per follow-up: next_turn + question + tail tokens
    std::vector<int> chain;                  // per prompt: positions its follow-ups add to a sequence, at most
    int cells = 0;                           // KV cells of all follow-ups (their own; the answer's are shared)
};

// Sequences a track's prompts take: one per prompt and one per follow-up.
int track_sequences(const std::vector<PromptRequest> & prompts);

// The tokens of a prompt's known answer (empty when it has none).
std::vector<int32_t> known_answer_tokens(const llama_vocab * vocab, const PromptRequest & p);

// Checks the follow-ups and known answers of one track and tokenizes them (InputError on bad input).
FollowUpPlan plan_followups(const llama_vocab * vocab, const ChatPieces & chat, const std::vector<PromptRequest> & prompts,
                            int n_ctx_train);

// KV cells of one prompt's follow-ups besides the prompt's own (sizing: Engine's text_cells); `chain` receives the
// most they add to one sequence.
long followup_cells(const llama_vocab * vocab, const ChatPieces & chat, const PromptRequest & p, long * chain);

}  // namespace mf
