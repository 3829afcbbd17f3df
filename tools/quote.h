// Quoting for what nasfsctl prints to a terminal.
//
// Names and messages reach nasfsctl from the NAS (paths, symlink targets,
// xattr values, node names), through the daemon's JSON answers, which carry
// any byte. Printed raw, a name holding a newline forges lines of the report,
// and one holding escape sequences drives the operator's terminal. Every such
// string goes through Quote() before it is printed as text (--json output is
// JSON-escaped already and left alone).
#pragma once

#include <string>
#include <string_view>

namespace nasfs::ctl {

// How much Quote() lets through bare.
enum class Bare {
  // Names, paths, ids: a space would blur where the name ends in the
  // columns and sentences it is printed in, so it forces quotes.
  kWord,
  // Messages and the daemon's words ("split brain", an error): spaces are
  // kept bare, so a sentence still reads as one.
  kText,
};

// `s` unchanged when it is non-empty, valid UTF-8, holds only printable
// characters, no '"' and no '\', and (kWord) no space; otherwise `s` inside
// double quotes with these escapes, and nothing else changed:
//   \n  \t  \\  \"
//   \xNN for each byte of a control character (C0, DEL, C1 U+0080-U+009F),
//        of an invisible character that moves or hides text (bidirectional
//        controls, zero-width characters, line and paragraph separators,
//        tags, soft hyphen), and for each byte that is not valid UTF-8.
// So the result is one line, safe for a terminal, and unambiguous: it begins
// with '"' exactly when it was quoted, and the bytes of `s` can be read back
// from it (as from a C string literal).
std::string Quote(std::string_view s, Bare bare = Bare::kWord);

}  // namespace nasfs::ctl
