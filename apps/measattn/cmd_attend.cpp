// measattn attend — one attention layer applied to a weighted point cloud.
//
//   measattn attend --model M.safetensors --tokens X.npy [--weights w.npy]
//                   [--queries Y.npy] [--causal] [--residual] [--dtype f64|f32]
//                   [--normalization softmax|sinkhorn] [--sinkhorn-iterations K] --out OUT.npy
//
// The options are AttendOptions' fields (flags from its field table;
// --sinkhorn-iters is kept as an alias of --sinkhorn-iterations).
//
// Without --queries: self-attention, OUT row i = Gamma_mu(x_i) where
// mu = sum_j w_j delta_{x_j} (uniform weights by default). With --queries:
// cross-attention, OUT row i = Gamma_mu(y_i). --residual adds the query.
// Every input is read and validated before anything is computed; OUT is
// written atomically only on success. Under `mpirun -np P` every rank reads
// the inputs, the ranks split the queries and the keys (the result is
// bit-identical to one process) and rank 0 writes OUT.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "command.hpp"
#include "flags.hpp"
#include "inputs.hpp"
#include "measattn/attention.hpp"
#include "measattn/error.hpp"
#include "measattn/io.hpp"
#include "measattn/measure.hpp"
#include "output.hpp"

namespace measattn::cli {
namespace {

struct AttendArgs {
  std::string model, tokens, weights, queries, out;
  std::string dtype = "f64";
  AttendOptions options;  ///< bound to the flags through its field table (attention.hpp)
  OptionBinder binder;
};

std::string dim_text(Index d) { return std::to_string(d); }

template <class Scalar>
void run_attend(const AttendArgs& a, const AttendOptions& options) {
  const Model<Scalar> model = load_model<Scalar>(a.model);
  const auto mu = read_token_measure<Scalar>(a.tokens, a.weights);
  if (mu->dim() != model.key_dim()) {
    throw invalid_argument("--tokens: " + a.tokens + ": tokens have dimension " +
                           dim_text(mu->dim()) + ", the model " + a.model +
                           " expects keys of dimension " + dim_text(model.key_dim()));
  }
  Matrix<Scalar> queries;
  const bool cross = !a.queries.empty();
  if (cross) {
    queries = read_npy_matrix<Scalar>(a.queries, "--queries");
    if (queries.rows() == 0) {
      throw invalid_argument("--queries: " + a.queries + ": no queries (0 rows)");
    }
    if (queries.cols() != model.query_dim()) {
      throw invalid_argument("--queries: " + a.queries + ": queries have dimension " +
                             dim_text(queries.cols()) + ", the model " + a.model +
                             " expects queries of dimension " + dim_text(model.query_dim()));
    }
  } else if (model.query_dim() != model.key_dim()) {
    throw invalid_argument("--queries: the model " + a.model + " has query dimension " +
                           dim_text(model.query_dim()) + " and key dimension " +
                           dim_text(model.key_dim()) +
                           "; self-attention needs them equal (give --queries)");
  }
  const Index query_dim = cross ? queries.cols() : mu->dim();
  if (options.residual && model.out_dim() != query_dim) {
    throw invalid_argument("--residual: the model's output dimension " + dim_text(model.out_dim()) +
                           " differs from the query dimension " + dim_text(query_dim));
  }
  // Library errors name their fields; main() maps them to flags (flags.hpp).
  const Matrix<Scalar> out = cross ? attention_field(model, *mu, queries, options)
                                   : attention_field(model, *mu, mu->atoms(), options);
  if (!out.allFinite()) {
    throw invalid_argument("--out: " + a.out + ": the output is not finite (inputs too large for " +
                           (std::is_same_v<Scalar, float> ? "float32" : "float64") + ")");
  }
  if (writes_outputs()) write_npy(a.out, out);
}

const bool registered = register_command(
    "attend", "Apply one attention layer (safetensors model) to a weighted point cloud (.npy)",
    [](CLI::App& app) {
      auto a = std::make_shared<AttendArgs>();
      std::vector<FieldFlag> fields = token_fields(&a->tokens, &a->weights);
      fields.push_back({"queries", "--queries", &a->queries});
      register_fields(app, std::move(fields));
      app.add_option("--model", a->model,
                     "Model: safetensors with nn.MultiheadAttention weights and num_heads")
          ->required();
      app.add_option("--tokens", a->tokens, "Tokens (keys and values): n x d .npy, one per row")
          ->required();
      app.add_option("--weights", a->weights, "Token weights: length-n .npy (default uniform)");
      app.add_option("--queries", a->queries,
                     "Queries for cross-attention: m x d_q .npy (default: the tokens)");
      a->binder.bind(app, a->options,
                     {"causal", "residual", "normalization", "sinkhorn_iterations"},
                     {{"sinkhorn_iterations", {"--sinkhorn-iters"}}});
      // After the options' rows: a field named by both (normalization) maps to its flag.
      register_fields(app, model_fields("--model", &a->model));
      app.add_option("--dtype", a->dtype, "Precision of the computation and the output: f64|f32")
          ->capture_default_str();
      app.add_option("--out", a->out, "Output .npy: one row per query, input order")->required();
      app.callback([a] {
        const DType dtype = parse_dtype(a->dtype, "--dtype");
        a->binder.apply();  // --normalization
        AttendOptions options = a->options;
        options.validate();
        // Under mpirun the ranks split the queries and keys (docs/distributed.md).
        options.communicator = communicator();
        if (options.communicator.distributed() &&
            options.normalization == Normalization::sinkhorn) {
          throw invalid_argument(
              "--normalization: sinkhorn attention is not distributed (run it on one process)");
        }
        if (options.normalization == Normalization::sinkhorn && !a->queries.empty()) {
          throw invalid_argument(
              "--normalization: sinkhorn attention is defined for self-attention only "
              "(drop --queries)");
        }
        check_output_file(a->out, "--out");  // before any work
        if (dtype == DType::f32) {
          run_attend<float>(*a, options);
        } else {
          run_attend<double>(*a, options);
        }
      });
    });

}  // namespace
}  // namespace measattn::cli
