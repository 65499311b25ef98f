// Run a recsys_export bundle's TorchScript module from C++ (libtorch) and print JSON.
//
//   recsys_example BUNDLE_DIR INPUTS.txt      (or MODULE.pt instead of BUNDLE_DIR)
//
// BUNDLE_DIR: the module path is read from manifest.json (formats.torchscript.module).
// INPUTS.txt: one input per line, "name v1 v2 ..." with space-separated integers
// (item/user *indices*, not raw ids); blank lines and lines starting with '#' are
// ignored; a name with no values is an empty tensor:
//
//   score_users   0 1 2        -> score(users=..., items=score_items)
//   score_items   3 4 5
//   users         0 5 7        -> score_all(users) and recommend(users, k, ...)
//   k             3
//   exclude_rows  0 0 1        -> COO exclusions: exclude_rows[j] is a position in users,
//   exclude_items 1 2 3           exclude_items[j] the item index dropped for that user
//
// Output (one JSON object on stdout; non-finite scores such as the -inf of unfillable
// recommend slots are written as null):
//
//   {"score": {"scores": [...]}, "score_all": {"scores": [[...], ...]},
//    "recommend": {"scores": [[...], ...], "items": [[...], ...]}}
//
// The manifest lookup below is a deliberately small scan of the machine-written
// manifest.json; real applications should use a JSON library (nlohmann/json, ...).

#include <torch/script.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_directory(const std::string& path) {
  std::ifstream probe(path + "/manifest.json");
  return static_cast<bool>(probe);
}

// Position just after `"key"` followed by optional whitespace and ':' at or after `from`.
size_t find_key(const std::string& s, const std::string& key, size_t from) {
  const std::string quoted = "\"" + key + "\"";
  for (size_t pos = s.find(quoted, from); pos != std::string::npos;
       pos = s.find(quoted, pos + 1)) {
    size_t p = pos + quoted.size();
    while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
    if (p < s.size() && s[p] == ':') return p + 1;
  }
  return std::string::npos;
}

// formats.torchscript.module from manifest.json (a relative path inside the bundle).
std::string torchscript_module(const std::string& bundle) {
  const std::string manifest = read_file(bundle + "/manifest.json");
  size_t p = find_key(manifest, "formats", 0);
  if (p != std::string::npos) p = find_key(manifest, "torchscript", p);
  if (p != std::string::npos) p = find_key(manifest, "module", p);
  if (p == std::string::npos)
    throw std::runtime_error("manifest.json has no formats.torchscript.module; export the "
                             "bundle with formats including 'torchscript'");
  const size_t open = manifest.find('"', p);
  const size_t close = manifest.find('"', open + 1);
  if (open == std::string::npos || close == std::string::npos)
    throw std::runtime_error("malformed formats.torchscript.module in manifest.json");
  return bundle + "/" + manifest.substr(open + 1, close - open - 1);
}

std::map<std::string, std::vector<int64_t>> read_inputs(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::map<std::string, std::vector<int64_t>> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string name;
    if (!(ls >> name) || name[0] == '#') continue;
    std::vector<int64_t> values;
    std::string tok;
    while (ls >> tok) {
      size_t used = 0;
      const long long v = std::stoll(tok, &used);
      if (used != tok.size()) throw std::runtime_error("not an integer: " + tok);
      values.push_back(static_cast<int64_t>(v));
    }
    out[name] = values;
  }
  for (const char* required :
       {"score_users", "score_items", "users", "k", "exclude_rows", "exclude_items"}) {
    if (!out.count(required)) throw std::runtime_error(std::string("missing input line: ") + required);
  }
  if (out["k"].size() != 1) throw std::runtime_error("k takes exactly one value");
  return out;
}

torch::Tensor int64_tensor(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::dtype(torch::kInt64)).reshape({static_cast<int64_t>(v.size())});
}

void print_float(std::ostream& os, float x) {
  if (!std::isfinite(x)) {
    os << "null";
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
  os << buf;
}

// A 1-d or 2-d tensor as (nested) JSON arrays.
void print_tensor(std::ostream& os, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  if (c.dim() == 1) {
    os << '[';
    for (int64_t i = 0; i < c.size(0); ++i) {
      if (i) os << ", ";
      if (c.scalar_type() == torch::kFloat32)
        print_float(os, c.data_ptr<float>()[i]);
      else
        os << c.data_ptr<int64_t>()[i];
    }
    os << ']';
    return;
  }
  os << '[';
  for (int64_t r = 0; r < c.size(0); ++r) {
    if (r) os << ", ";
    print_tensor(os, c[r]);
  }
  os << ']';
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " BUNDLE_DIR|MODULE.pt INPUTS.txt\n";
    return 2;
  }
  try {
    const std::string target = argv[1];
    const std::string module_path = is_directory(target) ? torchscript_module(target) : target;
    auto in = read_inputs(argv[2]);
    const torch::Tensor score_users = int64_tensor(in["score_users"]);
    const torch::Tensor score_items = int64_tensor(in["score_items"]);
    const torch::Tensor users = int64_tensor(in["users"]);
    const int64_t k = in["k"][0];
    const torch::Tensor exclude_rows = int64_tensor(in["exclude_rows"]);
    const torch::Tensor exclude_items = int64_tensor(in["exclude_items"]);
    torch::NoGradGuard no_grad;

    // The calls shown in docs/runtimes.md (tests/test_embedding.py checks they match).
    // recommend's k is a plain TorchScript int (the ONNX graph takes a 0-d int64 tensor).
    torch::jit::Module m = torch::jit::load(module_path);
    auto scores = m.get_method("score")({score_users, score_items}).toTensor();
    auto all = m.get_method("score_all")({users}).toTensor();
    auto rec = m.get_method("recommend")({users, k, exclude_rows, exclude_items}).toTuple();
    auto top_scores = rec->elements()[0].toTensor();
    auto top_items = rec->elements()[1].toTensor();

    std::ostringstream os;
    os << "{\"score\": {\"scores\": ";
    print_tensor(os, scores);
    os << "}, \"score_all\": {\"scores\": ";
    print_tensor(os, all);
    os << "}, \"recommend\": {\"scores\": ";
    print_tensor(os, top_scores);
    os << ", \"items\": ";
    print_tensor(os, top_items);
    os << "}}\n";
    std::cout << os.str();
  } catch (const std::exception& e) {
    std::cerr << "recsys_example: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
