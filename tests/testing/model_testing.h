// Test helpers for models built from layers.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "lowbit/nn/model.h"

namespace lowbit::testing {

// A model's layer DAG, one line per layer call in topological order:
// "name:Class<-input1,input2" (inputs by producing layer name; explicit masks not listed).
inline std::vector<std::string> structure(const nn::Model& m) {
  std::vector<std::string> lines;
  std::set<const nn::LayerNode*> seen;
  std::function<void(const std::shared_ptr<nn::LayerNode>&)> visit =
      [&](const std::shared_ptr<nn::LayerNode>& n) {
        if (!seen.insert(n.get()).second) return;
        for (const nn::KTensor& k : n->inputs) visit(k.node);
        std::string s = n->layer->name() + ":" + n->layer->class_name();
        for (size_t i = 0; i < n->inputs.size(); ++i)
          s += (i ? "," : "<-") + n->inputs[i].node->layer->name();
        lines.push_back(s);
      };
  for (const nn::KTensor& k : m.outputs()) visit(k.node);
  return lines;
}

}  // namespace lowbit::testing
