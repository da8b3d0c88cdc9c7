#pragma once
// Crash-safe file replacement: write a temp file next to the target, fsync it, rename it over the target.
// Readers therefore see either the old file or the complete new one, never a partial write.
#include <functional>
#include <ostream>
#include <string>

namespace mha2mla {

// Calls writer on a stream to PATH.tmp.<pid>.<n>, then fsyncs and renames it to path.
// If writer throws or any I/O step fails, the temp file is removed, path is left untouched,
// and the exception propagates (I/O failures as mha2mla::Error naming the file).
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer);

// write_file_atomic with a fixed content.
void write_text_atomic(const std::string& path, const std::string& text);

// Whole file as a string; throws Error naming the file if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace mha2mla
