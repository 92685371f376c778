// Atomic file writes: every file lowbit saves (models, integer models, ONNX files, reports) is
// written to "<path>.tmp.<pid>", flushed, then renamed over `path`, so a crash or a full disk
// never leaves a half-written file under the real name.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace lowbit::io {

// Calls write(out) on a stream to the temporary file, then renames it to `path`. `who` names the
// caller in the messages ("save", "write_model", ...). IoError (the temporary removed) when the
// file cannot be created, writing fails (disk full?) or the rename fails.
void write_atomically(const std::string& path, const std::string& who,
                      const std::function<void(std::ostream& out)>& write);

}  // namespace lowbit::io
