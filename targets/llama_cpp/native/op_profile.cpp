// Where a llama.cpp build spends its time, by ggml op: prompt processing and generation timed node by node.
//
// The scheduler's eval callback is asked about every node before it is computed; answering "yes" for every node
// that computes something makes the scheduler run each one alone and report back after it, so the time from the
// last question to the report is that node's compute (thread pool launch included: the overhead is measured and
// printed beside, as the run without the callback). Views and reshapes compute nothing and are never asked for.
//
//   op_profile MODEL N_PROMPT N_GEN THREADS FLASH_ATTN(0|1) [UBATCH]
// prints one JSON object on stdout.

#include "llama.h"
#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct op_time {
    long long count = 0;
    double seconds = 0.0;
};

struct profiler {
    bool enabled = false;
    clock_type::time_point asked;
    std::map<std::string, op_time> ops;
};

bool computes_nothing(const ggml_tensor * t) {
    switch (t->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return true;
        default:
            return false;
    }
}

std::string op_key(const ggml_tensor * t) {
    std::string key = ggml_op_desc(t);
    const ggml_tensor * w = t->src[0];
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID || t->op == GGML_OP_GET_ROWS) && w != nullptr) {
        // the weights decide the kernel: their type and shape
        key += std::string(" ") + ggml_type_name(w->type) + " " + std::to_string(w->ne[0]) + "x" +
               std::to_string(w->ne[1]);
    } else {
        key += std::string(" ") + ggml_type_name(t->type);
    }
    return key;
}

bool on_node(ggml_tensor * t, bool ask, void * user_data) {
    auto * p = static_cast<profiler *>(user_data);
    if (!p->enabled || computes_nothing(t)) {
        return ask ? false : true;
    }
    if (ask) {
        p->asked = clock_type::now();  // the scheduler computes this node next, alone
        return true;
    }
    op_time & o = p->ops[op_key(t)];
    o.count += 1;
    o.seconds += std::chrono::duration<double>(clock_type::now() - p->asked).count();
    return true;
}

void quiet(ggml_log_level, const char *, void *) {}

std::string json_escape(const std::string & s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') { out += '\\'; out += c; }
        else if (static_cast<unsigned char>(c) < 0x20) { out += ' '; }
        else { out += c; }
    }
    return out;
}

double decode_tokens(llama_context * ctx, std::vector<llama_token> & tokens, int at_once) {
    const auto t0 = clock_type::now();
    for (size_t i = 0; i < tokens.size(); i += at_once) {
        const int n = std::min<int>(at_once, static_cast<int>(tokens.size() - i));
        if (llama_decode(ctx, llama_batch_get_one(tokens.data() + i, n)) != 0) {
            std::fprintf(stderr, "llama_decode failed\n");
            std::exit(3);
        }
    }
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 6) {
        std::fprintf(stderr, "usage: %s MODEL N_PROMPT N_GEN THREADS FLASH_ATTN [UBATCH]\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    const int n_prompt = std::atoi(argv[2]);
    const int n_gen = std::atoi(argv[3]);
    const int threads = std::atoi(argv[4]);
    const bool flash_attn = std::atoi(argv[5]) != 0;
    const int ubatch = argc > 6 ? std::atoi(argv[6]) : 0;

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", model_path);
        return 3;
    }
    profiler prof;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_prompt + n_gen + 16);
    cp.n_batch = static_cast<uint32_t>(n_prompt > 0 ? n_prompt : 1);
    if (ubatch > 0) {
        cp.n_ubatch = static_cast<uint32_t>(ubatch);
    }
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = on_node;
    cp.cb_eval_user_data = &prof;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        std::fprintf(stderr, "cannot create a context\n");
        return 3;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::srand(1234);
    auto random_tokens = [&](int n) {
        std::vector<llama_token> t(n);
        for (auto & x : t) x = std::rand() % n_vocab;
        return t;
    };
    llama_memory_t mem = llama_get_memory(ctx);

    std::string out = "{\"system_info\": \"" + json_escape(llama_print_system_info()) + "\", \"phases\": {";
    bool first_phase = true;
    struct phase { const char * name; int tokens; int at_once; };
    for (const phase ph : {phase{"pp", n_prompt, n_prompt}, phase{"tg", n_gen, 1}}) {
        if (ph.tokens <= 0) continue;
        std::vector<llama_token> tokens = random_tokens(ph.tokens);
        std::vector<llama_token> warm = random_tokens(1);
        prof.enabled = false;                       // warm-up: weights paged in, thread pool started
        decode_tokens(ctx, warm, 1);
        llama_memory_clear(mem, true);
        const double plain_s = decode_tokens(ctx, tokens, ph.at_once);  // the same work, no callback
        llama_memory_clear(mem, true);
        prof.ops.clear();
        prof.enabled = true;
        const double profiled_s = decode_tokens(ctx, tokens, ph.at_once);
        prof.enabled = false;
        llama_memory_clear(mem, true);
        out += std::string(first_phase ? "" : ", ") + "\"" + ph.name + "\": {\"tokens\": " +
               std::to_string(ph.tokens) + ", \"seconds\": " + std::to_string(profiled_s) +
               ", \"unprofiled_seconds\": " + std::to_string(plain_s) + ", \"ops\": [";
        bool first_op = true;
        for (const auto & [key, t] : prof.ops) {
            out += std::string(first_op ? "" : ", ") + "{\"op\": \"" + json_escape(key) + "\", \"count\": " +
                   std::to_string(t.count) + ", \"seconds\": " + std::to_string(t.seconds) + "}";
            first_op = false;
        }
        out += "]}";
        first_phase = false;
    }
    out += "}}";
    std::printf("%s\n", out.c_str());
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
