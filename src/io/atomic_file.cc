#include "lowbit/io/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "lowbit/error.h"

namespace lowbit::io {

void write_atomically(const std::string& path, const std::string& who,
                      const std::function<void(std::ostream& out)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      LOWBIT_THROW(IoError, who, ": cannot write '", tmp, "' (for '", path,
                   "'): ", std::strerror(errno),
                   "; check that the directory exists and is writable");
    write(out);
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      LOWBIT_THROW(IoError, who, ": writing '", tmp, "' failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    LOWBIT_THROW(IoError, who, ": cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

}  // namespace lowbit::io
