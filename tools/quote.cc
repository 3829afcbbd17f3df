#include "tools/quote.h"

#include <fmt/format.h>

namespace nasfs::ctl {
namespace {

// The length of the valid UTF-8 sequence at s[i] and its code point in *cp;
// 0 when the bytes there are not one (a stray continuation byte, a truncated
// sequence, an overlong form, a surrogate, or beyond U+10FFFF).
size_t Utf8At(std::string_view s, size_t i, char32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t n;
  char32_t c, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, c = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, c = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, c = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return n;
}

// Characters a terminal acts on (controls), or that are invisible and move or
// hide the text around them, so a name holding them reads as another
// ("Trojan Source" bidirectional overrides, zero-width joiners, tags).
bool Unsafe(char32_t c) {
  return c < 0x20 || (c >= 0x7F && c <= 0x9F) ||  // C0, DEL, C1
         c == 0xAD ||                             // soft hyphen
         c == 0x61C ||                            // Arabic letter mark
         c == 0x180E ||                           // Mongolian vowel separator
         (c >= 0x200B && c <= 0x200F) ||          // zero-width, LRM, RLM
         (c >= 0x2028 && c <= 0x202E) ||          // line/paragraph separators, embeddings, overrides
         (c >= 0x2060 && c <= 0x206F) ||          // word joiner, invisible operators, isolates
         c == 0xFEFF ||                           // zero-width no-break space (BOM)
         (c >= 0xFFF9 && c <= 0xFFFB) ||          // interlinear annotation
         (c >= 0xE0000 && c <= 0xE007F);          // tags
}

// Characters that show as a blank: in a word they blur where it ends.
bool Blank(char32_t c) {
  return c == ' ' || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

}  // namespace

std::string Quote(std::string_view s, Bare bare) {
  bool plain = !s.empty();
  for (size_t i = 0; plain && i < s.size();) {
    char32_t c;
    const size_t n = Utf8At(s, i, &c);
    plain = n > 0 && !Unsafe(c) && c != '"' && c != '\\' && !(bare == Bare::kWord && Blank(c));
    i += n;
  }
  if (plain) return std::string(s);

  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  auto hex = [&out](std::string_view bytes) {
    for (unsigned char b : bytes) out += fmt::format("\\x{:02x}", b);
  };
  for (size_t i = 0; i < s.size();) {
    char32_t c;
    const size_t n = Utf8At(s, i, &c);
    if (n == 0) {
      hex(s.substr(i, 1));  // resynchronizes on the next byte
      ++i;
      continue;
    }
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (Unsafe(c)) {
          hex(s.substr(i, n));
        } else {
          out.append(s.substr(i, n));
        }
    }
    i += n;
  }
  out.push_back('"');
  return out;
}

}  // namespace nasfs::ctl
