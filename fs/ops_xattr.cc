// Extended attributes: read from the read NAS, changed on both.
#include "fs/ops.h"

namespace nasfs::ops {

namespace {

// getxattr and listxattr share the size-query protocol: size 0 asks how
// large the value is.
template <typename Fn>
void ReplyXattr(fuse_req_t req, fuse_ino_t ino, size_t size, Fn call) {
  Nasfs& fs = Fs(req);
  std::string path;
  if (!PathOrReply(req, fs, ino, &path)) return;
  std::string out;
  int r = fs.ReadInto<std::string>(
      [path, size, call](const Backend& b, std::string* o) { return call(b, path, size, o); }, &out);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  if (size == 0)
    fuse_reply_xattr(req, std::stoul(out));
  else
    fuse_reply_buf(req, out.data(), out.size());
}

}  // namespace

void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  std::string n = name;
  ReplyXattr(req, ino, size, [n](const Backend& b, const std::string& p, size_t s, std::string* o) {
    return b.GetXattr(p, n, s, o);
  });
}

void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  ReplyXattr(req, ino, size, [](const Backend& b, const std::string& p, size_t s, std::string* o) {
    return b.ListXattr(p, s, o);
  });
}

void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
  Nasfs& fs = Fs(req);
  std::string path;
  if (!PathOrReply(req, fs, ino, &path)) return;
  std::string n = name, v(value, size);
  fuse_reply_err(req, fs.Mutate(
                          Mutation::kSetXattr, {path},
                          [path, n, v, flags](const Backend& b) { return b.SetXattr(path, n, v, flags); }, {}, {},
                          fs.AliasesOf(ino, path)));
}

void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  Nasfs& fs = Fs(req);
  std::string path;
  if (!PathOrReply(req, fs, ino, &path)) return;
  std::string n = name;
  fuse_reply_err(req, fs.Mutate(
                          Mutation::kRemoveXattr, {path}, [path, n](const Backend& b) { return b.RemoveXattr(path, n); }, {},
                          {}, fs.AliasesOf(ino, path)));
}

}  // namespace nasfs::ops
