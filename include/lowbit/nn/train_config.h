// A training run described in one JSON file (what `lowbit train CONFIG` reads): a Keras-style
// model config, optionally wrapped with the compile and fit settings.
//
//   {"class_name": "Sequential", "config": {"name": "tiny", "layers": [...]}}   // model only
//   {"model": {"class_name": "Sequential", "config": {...}},                     // wrapped
//    "compile": {"optimizer": "adam" | {"class_name": "Adam", "config": {...}},
//                "loss": "sparse_categorical_crossentropy" | {"class_name": ..., "config": ...},
//                "metrics": ["accuracy"]},
//    "fit": {"epochs": 1, "batch_size": 32, "validation_split": 0.1}}
//
// The model config is what Model::get_config writes (model_from_config reads it), either bare
// (a Functional config has "input_layers"; otherwise it is read as a Sequential config) or as
// {"class_name", "config"} (Keras' model.to_json()).
//
//   nn::TrainConfig t = nn::read_train_config("tiny.json");
//   t.model->compile(t.compile);  t.model->fit(x, y, t.fit);
#pragma once

#include <string>

#include "lowbit/nn/model.h"

namespace lowbit::nn {

struct TrainConfig {
  ModelPtr model;          // fresh weights
  CompileOptions compile;  // optimizer / loss left null when the file has none
  FitOptions fit;          // epochs, batch_size, validation_split from the file, else defaults
};

// Parses the object described above. Throws ValueError naming the key for unknown keys (at the
// top level of a wrapped config, in "compile" and in "fit"), values of the wrong type, and
// what model_from_config / optimizer_from_config / loss_from_config refuse.
TrainConfig train_config_from_json(const Json& j);
// The same from a file; IoError naming the file when it is missing or not valid JSON, and the
// errors above prefixed with the file name.
TrainConfig read_train_config(const std::string& path);

}  // namespace lowbit::nn
