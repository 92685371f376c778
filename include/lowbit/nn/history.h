// Saving and reading a training History (what Model::fit returns) as JSON or CSV, e.g. for the
// `lowbit train` / `lowbit quantize` commands and the report that plots the curves.
//
//   nn::History h = model->fit(x, y, {.epochs = 3, .validation_split = 0.1});
//   nn::save_history("model.history.json", h, "float");
//   nn::PhaseHistory back = nn::load_history("model.history.json");  // back.phase == "float"
//
// JSON (".json"): {"phase": "float" | "qat", "epochs": [0, 1, 2],
//                  "history": {"loss": [...], "val_loss": [...], ...}, "stop_reason": "",
//                  "last_epoch_partial": false}
// CSV (".csv"): a header "epoch,<metric>,..." (metrics in sorted order, as History's map), then
// one row per epoch; the phase and stop reason are not stored (load_history gives phase "").
// Numbers are written with 17 significant digits, so a History reads back exactly; a non-finite
// value (a diverged loss) is written as null in JSON and as nan/inf in CSV.
#pragma once

#include <string>

#include "lowbit/nn/callbacks.h"
#include "lowbit/nn/layer.h"

namespace lowbit::nn {

// A History and the training phase it came from: "float" (fit of a float model) or "qat"
// (quantization-aware fine-tuning), "" when unknown (a CSV file).
struct PhaseHistory {
  std::string phase;
  History history;
};

// The JSON form described above. ValueError if the metric lists and `epochs` differ in length.
Json history_to_json(const History& h, const std::string& phase);
// The inverse; ValueError naming the field for a malformed object (a missing "history", a
// metric that is not a list of numbers, lists of different lengths).
PhaseHistory history_from_json(const Json& j);

// Writes `h` to `path`: CSV if it ends in ".csv", JSON otherwise. IoError naming the file if it
// cannot be written; ValueError as history_to_json.
void save_history(const std::string& path, const History& h, const std::string& phase);
// Reads a file written by save_history (CSV by the ".csv" suffix, JSON otherwise). IoError
// naming the file for a missing file, malformed JSON or CSV (the line), ValueError as
// history_from_json.
PhaseHistory load_history(const std::string& path);

}  // namespace lowbit::nn
