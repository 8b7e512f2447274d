// A consumer of the installed library: self-attention of a small measure.
#include <iostream>
#include <measattn/measattn.hpp>

int main() {
  auto model = measattn::Model<double>::random(4, 2, true, 7);
  measattn::MatrixD atoms = measattn::MatrixD::Random(5, 4);
  auto mu = measattn::MeasureD::empirical(atoms);
  auto out = measattn::self_attention(model, mu);
  auto ref = measattn::transformer_attention(model, mu, mu.atoms());
  const double err = (out.atoms() - ref).cwiseAbs().maxCoeff();
  std::cout << "measattn " << measattn::version << " consumer: max error " << err << "\n";
  return err < 1e-12 ? 0 : 1;
}
