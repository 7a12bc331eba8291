// Follow-up questions and known answers: see followup.h for where BatchRun calls in.
#include "followup.h"

#include "batch_run.h"
#include "llama.h"

#include <algorithm>
#include <cmath>

namespace mf {

namespace {

std::vector<int32_t> followup_feed(const llama_vocab * vocab, const ChatPieces & chat, const FollowUpRequest & f) {
    std::vector<int32_t> toks = tokenize(vocab, chat.next_turn, true);
    const auto q = tokenize(vocab, f.text, /*parse_special*/ false);  // the user's text never becomes control tokens
    const auto tail = tokenize(vocab, chat.tail, true);
    toks.insert(toks.end(), q.begin(), q.end());
    toks.insert(toks.end(), tail.begin(), tail.end());
    return toks;
}

void check_followup(const FollowUpRequest & f, int n_ctx_train) {
    if (f.max_tokens < 1) throw InputError("a follow-up's max_tokens must be >= 1");
    if (f.max_tokens >= n_ctx_train) throw InputError("a follow-up's max_tokens is not below the trained context");
    if (f.text.find('\0') != std::string::npos) throw InputError("follow-up text contains a NUL character");
    const auto & s = f.sampling;
    if (!std::isfinite(s.temperature) || !std::isfinite(s.top_p) || !std::isfinite(s.min_p) ||
        !std::isfinite(s.repeat_penalty) || s.top_p <= 0.0f || s.top_p > 1.0f || s.top_k < 0 ||
        s.repeat_last_n < 0 || s.repeat_last_n > kMaxRepeatLastN) {
        throw InputError("a follow-up's sampling settings are out of range");
    }
}

}  // namespace

int track_sequences(const std::vector<PromptRequest> & prompts) {
    size_t n = prompts.size();
    for (const auto & p : prompts) n += p.followups.size();
    return (int) std::min<size_t>(n, 1u << 20);
}

std::vector<int32_t> known_answer_tokens(const llama_vocab * vocab, const PromptRequest & p) {
    if (!p.answered) return {};
    if (!p.answer_tokens.empty()) {
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);
        for (int32_t t : p.answer_tokens) {
            if (t < 0 || t >= n_vocab) throw InputError("a known answer's token id is outside the vocabulary");
        }
        return p.answer_tokens;
    }
    if (p.answer.find('\0') != std::string::npos) throw InputError("a known answer contains a NUL character");
    return tokenize(vocab, p.answer, /*parse_special*/ false);
}

long followup_cells(const llama_vocab * vocab, const ChatPieces & chat, const PromptRequest & p, long * chain) {
    long n = 0, top = 0;
    for (const auto & f : p.followups) {
        const long one = 1 + (long) followup_feed(vocab, chat, f).size() + std::max(f.max_tokens, 0);
        n += one;
        top = std::max(top, one);
    }
    if (chain) *chain = top + (long) known_answer_tokens(vocab, p).size();
    return n;
}

FollowUpPlan plan_followups(const llama_vocab * vocab, const ChatPieces & chat, const std::vector<PromptRequest> & prompts,
                            int n_ctx_train) {
    FollowUpPlan plan;
    for (size_t i = 0; i < prompts.size(); i++) {
        const auto & p = prompts[i];
        if (!p.followups.empty() && chat.next_turn.empty()) {
            throw InputError("follow-up questions need the chat template's next-turn piece (not available with the "
                             "Mtmd framing's built-in chat)");
        }
        if (p.answered && p.followups.empty()) throw InputError("a known answer without follow-up questions");
        long chain = 0;
        plan.cells += (int) std::min<long>(followup_cells(vocab, chat, p, &chain), 1L << 28);
        plan.chain.push_back((int) std::min<long>(chain, 1L << 28));
        for (const auto & f : p.followups) {
            check_followup(f, n_ctx_train);
            plan.nth.push_back((int) std::count(plan.parent.begin(), plan.parent.end(), (int) i));
            plan.parent.push_back((int) i);
            plan.feed.push_back(followup_feed(vocab, chat, f));
        }
    }
    return plan;
}

// ---- BatchRun's follow-up steps -----------------------------------------------------------------------------------

namespace {
const FollowUpRequest & followup_of(const TrackRequest & req, const FollowUpPlan & fu, size_t k) {
    return req.prompts[(size_t) fu.parent[k]].followups[(size_t) fu.nth[k]];
}
}  // namespace

// One waiting slot per follow-up after the prompts' own: its sequence was taken at admission, its sampler made here.
void BatchRun::open_followup_slots(Active & a, FollowUpPlan && fu) {
    const size_t n_prompts = a.req.prompts.size();
    a.limit.clear();
    for (const auto & p : a.req.prompts) a.limit.push_back(p.max_tokens);
    a.waiting.assign(n_prompts, false);
    a.fu = std::move(fu);
    for (size_t k = 0; k < a.fu.parent.size(); k++) {
        const FollowUpRequest & f = followup_of(a.req, a.fu, k);
        a.limit.push_back(f.max_tokens);
        a.waiting.push_back(true);
        a.pos.push_back(0);
        a.live.push_back(false);
        a.logit_idx.push_back(-1);
        a.samplers.push_back(make_sampler(a.seqs[n_prompts + k], f.sampling));
    }
    a.res.outputs.resize(n_prompts + a.fu.parent.size());
    a.n_live += a.fu.parent.size();  // a waiting follow-up keeps its track from retiring
}

// A prompt whose answer is known: its tokens were decoded with its suffix; it ends here, unsampled.
void BatchRun::take_answer(Active & a, size_t i) {
    const llama_vocab * vocab = llama_model_get_vocab(res_.model.get());
    PromptOutput & out = a.res.outputs[i];
    out.tokens = known_answer_tokens(vocab, a.req.prompts[i]);
    out.stop_reason = "answer";
    a.live[i] = false;
    a.n_live--;
}

// Starts the follow-ups whose answer has ended: copies the answer's sequence to each and decodes its turn there
// (all starting follow-ups in one batch when they fit), then samples its first token (queued into the next step).
// Called after each step's sampling and after admissions.
void BatchRun::start_followups() {
    llama_memory_t mem = llama_get_memory(res_.ctx.get());
    struct Start { Active * a; size_t j; std::vector<int32_t> feed; };
    std::vector<Start> starts;
    size_t total = 0;
    for (auto & a : active_) {
        const size_t n_prompts = a.req.prompts.size();
        for (size_t j = n_prompts; j < a.waiting.size(); j++) {
            const size_t i = (size_t) a.fu.parent[j - n_prompts];
            if (!a.waiting[j] || a.live[i]) continue;
            const PromptOutput & answer = a.res.outputs[i];
            Start s{&a, j, {}};
            // an answer cut at max_tokens: its last token was sampled but never decoded
            if (answer.stop_reason == "max_tokens" && !answer.tokens.empty()) s.feed.push_back(answer.tokens.back());
            const auto & turn = a.fu.feed[j - n_prompts];
            s.feed.insert(s.feed.end(), turn.begin(), turn.end());
            llama_memory_seq_cp(mem, a.seqs[i], a.seqs[j], -1, -1);
            a.pos[j] = a.pos[i];
            a.waiting[j] = false;
            a.res.stats.prompt_tokens += (int) s.feed.size();
            total += s.feed.size();
            starts.push_back(std::move(s));
        }
    }
    if (starts.empty()) return;
    if (total > (size_t) lim_.n_batch) {
        // longer together than a batch: each turn but its last token alone, then the last tokens together
        for (auto & s : starts) {
            decode_tokens(std::vector<int32_t>(s.feed.begin(), s.feed.end() - 1), s.a->seqs[s.j], s.a->pos[s.j]);
            s.feed.erase(s.feed.begin(), s.feed.end() - 1);
        }
        total = starts.size();
    }
    Batch b((int) total);
    for (auto & s : starts) {
        Active & a = *s.a;
        for (size_t k = 0; k < s.feed.size(); k++) {
            const int idx = b.add(s.feed[k], a.pos[s.j]++, a.seqs[s.j], k + 1 == s.feed.size());
            if (k + 1 == s.feed.size()) a.logit_idx[s.j] = idx;
        }
    }
    if (llama_decode(res_.ctx.get(), b.b)) throw EngineError("llama.cpp failed to evaluate a follow-up question");
    for (auto & s : starts) {  // sampled right away: a later decode overwrites these logits
        Active & a = *s.a;
        a.live[s.j] = true;  // n_live counted it while waiting
        const int row = a.logit_idx[s.j];
        a.logit_idx[s.j] = -1;
        accept(a, s.j, sample_row(a, s.j, row));
    }
}

// The follow-ups' outputs into their prompt's PromptOutput::followups (in the order they were asked).
void BatchRun::nest_followups(Active & a) {
    const size_t n_prompts = a.req.prompts.size();
    for (size_t k = 0; k < a.fu.parent.size(); k++) {
        a.res.outputs[(size_t) a.fu.parent[k]].followups.push_back(std::move(a.res.outputs[n_prompts + k]));
    }
    a.res.outputs.resize(n_prompts);
}

}  // namespace mf
