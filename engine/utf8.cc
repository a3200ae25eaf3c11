#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

bool IsContinuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

// The sequence length announced by `lead` (0 for bytes that never start a character) and the
// allowed range of the second byte (Unicode Table 3-7).
struct LeadInfo {
  size_t length;
  uint8_t second_lo;
  uint8_t second_hi;
};

LeadInfo ClassifyLead(uint8_t lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead < 0xC2) return {0, 0, 0};
  if (lead < 0xE0) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead < 0xF0) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead < 0xF4) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// How many bytes from text[pos] (at most the announced length) follow the rules of a
// well-formed character; equals the announced length for a complete character.
size_t WellFormedPrefixLength(std::string_view text, size_t pos, const LeadInfo& info) {
  if (info.length == 0) return 0;
  size_t n = 1;
  while (n < info.length && pos + n < text.size()) {
    const auto byte = static_cast<uint8_t>(text[pos + n]);
    const bool ok =
        n == 1 ? (byte >= info.second_lo && byte <= info.second_hi) : IsContinuation(byte);
    if (!ok) break;
    ++n;
  }
  return n;
}

}  // namespace

size_t Utf8CharLength(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  const LeadInfo info = ClassifyLead(static_cast<uint8_t>(text[pos]));
  const size_t n = WellFormedPrefixLength(text, pos, info);
  return n == info.length ? n : 0;
}

bool IsValidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t n = Utf8CharLength(text, pos);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

size_t IncompleteUtf8SuffixLength(std::string_view text) {
  for (size_t k = 1; k <= 3 && k <= text.size(); ++k) {
    const size_t pos = text.size() - k;
    const auto byte = static_cast<uint8_t>(text[pos]);
    if (IsContinuation(byte)) continue;
    const LeadInfo info = ClassifyLead(byte);
    const bool incomplete = info.length > k && WellFormedPrefixLength(text, pos, info) == k;
    return incomplete ? k : 0;
  }
  return 0;
}

std::string SanitizeUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const LeadInfo info = ClassifyLead(static_cast<uint8_t>(text[pos]));
    const size_t n = WellFormedPrefixLength(text, pos, info);
    if (n != 0 && n == info.length) {
      out.append(text.substr(pos, n));
    } else {
      out.append(kReplacementChar);
    }
    pos += n == 0 ? 1 : n;
  }
  return out;
}

std::optional<uint8_t> ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || !piece.starts_with("<0x") || piece.back() != '>') return std::nullopt;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<uint8_t>(value);
}

std::string BytePiece(uint8_t byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[byte >> 4] + kHex[byte & 15] + ">";
}

std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

}  // namespace cmoe::engine
