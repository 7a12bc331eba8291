#include "quantize.h"

#include "errors.h"
#include "llama.h"

namespace mf {

void quantize_model(const std::string & src, const std::string & dst, int ftype, int n_threads,
                    const ImportanceMatrix & imatrix) {
    llama_backend_init();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.nthread = n_threads;
    p.ftype = (llama_ftype) ftype;
    // llama.cpp reads a list ended by an entry with a null name
    std::vector<llama_model_imatrix_data> im;
    for (const auto & [name, values] : imatrix) im.push_back({name.c_str(), values.data(), values.size()});
    im.push_back({nullptr, nullptr, 0});
    if (!imatrix.empty()) p.imatrix = im.data();
    if (llama_model_quantize(src.c_str(), dst.c_str(), &p) != 0) {
        throw ModelFileError("llama.cpp could not quantize " + src + " to file type " + std::to_string(ftype) +
                             " (see the log)");
    }
}

}  // namespace mf
