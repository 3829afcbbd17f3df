#include "fs/inode_table.h"

#include <algorithm>
#include <cassert>
#include <mutex>
#include <vector>

namespace nasfs {

InodeTable::InodeTable() {
  auto root = std::make_unique<Node>();
  root->ino = FUSE_ROOT_ID;
  root->nlookup = 1;  // the kernel never forgets the root
  nodes_.emplace(FUSE_ROOT_ID, std::move(root));
}

fuse_ino_t InodeTable::Lookup(fuse_ino_t parent, const std::string& name) {
  WriterLock lk(&mu_);
  // A node must have a path: refuse under any detached ancestor, not only
  // a detached parent.
  if (!PathLocked(parent)) return 0;
  auto it = children_.find(Key{parent, name});
  if (it != children_.end()) {
    ++nodes_.at(it->second)->nlookup;
    return it->second;
  }
  auto n = std::make_unique<Node>();
  n->ino = next_ino_++;
  n->nlookup = 1;
  Node* raw = n.get();
  nodes_.emplace(raw->ino, std::move(n));
  AttachLocked(raw, parent, name);
  return raw->ino;
}

bool InodeTable::Forget(fuse_ino_t ino, uint64_t n) {
  WriterLock lk(&mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return true;
  if (ino == FUSE_ROOT_ID) return false;
  Node* node = it->second.get();
  node->nlookup = n >= node->nlookup ? 0 : node->nlookup - n;
  MaybeFreeLocked(node);
  return !nodes_.count(ino);
}

fuse_ino_t InodeTable::Peek(fuse_ino_t parent, const std::string& name) const {
  ReaderLock lk(&mu_);
  auto it = children_.find(Key{parent, name});
  return it == children_.end() ? 0 : it->second;
}

std::optional<std::string> InodeTable::PathLocked(fuse_ino_t ino) const {
  std::vector<const std::string*> parts;
  while (ino != FUSE_ROOT_ID) {
    auto it = nodes_.find(ino);
    if (it == nodes_.end() || it->second->parent == 0) return std::nullopt;
    parts.push_back(&it->second->name);
    ino = it->second->parent;
  }
  std::string p;
  for (auto i = parts.rbegin(); i != parts.rend(); ++i) {
    if (!p.empty()) p += '/';
    p += **i;
  }
  return p;
}

std::optional<std::string> InodeTable::Path(fuse_ino_t ino) const {
  ReaderLock lk(&mu_);
  return PathLocked(ino);
}

std::optional<std::string> InodeTable::NamePathLocked(fuse_ino_t parent, const std::string& name) const {
  auto p = PathLocked(parent);
  if (!p) return std::nullopt;
  return p->empty() ? name : *p + "/" + name;
}

std::optional<std::string> InodeTable::ChildPath(fuse_ino_t parent, const std::string& name) const {
  ReaderLock lk(&mu_);
  return NamePathLocked(parent, name);
}

std::vector<std::string> InodeTable::OtherPaths(fuse_ino_t ino) const {
  ReaderLock lk(&mu_);
  std::vector<std::string> out;
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || it->second->parent == 0) return out;
  const auto& links = it->second->links;
  for (auto l = links.rbegin(); l != links.rend(); ++l)  // DetachNameLocked promotes the last
    if (auto p = NamePathLocked(l->parent, l->name)) out.push_back(std::move(*p));
  return out;
}

void InodeTable::AttachLocked(Node* n, fuse_ino_t parent, const std::string& name) {
  if (n->parent == 0) {
    n->parent = parent;
    n->name = name;
  } else {
    n->links.push_back(Name{parent, name});
  }
  children_[Key{parent, name}] = n->ino;
  ++nodes_.at(parent)->children;
}

void InodeTable::DetachNameLocked(Node* n, fuse_ino_t parent, const std::string& name) {
  if (n->parent == parent && n->name == name) {
    if (n->links.empty()) {
      n->parent = 0;
    } else {
      n->parent = n->links.back().parent;
      n->name = std::move(n->links.back().name);
      n->links.pop_back();
    }
  } else {
    auto it = std::find_if(n->links.begin(), n->links.end(),
                           [&](const Name& x) { return x.parent == parent && x.name == name; });
    if (it == n->links.end()) return;
    n->links.erase(it);
  }
  children_.erase(Key{parent, name});
  Node* p = nodes_.at(parent).get();
  assert(p->children > 0 && "child count out of step with the tree");
  --p->children;
  MaybeFreeLocked(p);
}

void InodeTable::DetachLocked(Node* n) {
  while (n->parent != 0) DetachNameLocked(n, n->parent, std::string(n->name));
}

void InodeTable::MaybeFreeLocked(Node* n) {
  if (n->ino == FUSE_ROOT_ID || n->nlookup > 0 || n->children > 0) return;
  DetachLocked(n);  // may free the parent in turn
  nodes_.erase(n->ino);
}

fuse_ino_t InodeTable::Remove(fuse_ino_t parent, const std::string& name) {
  WriterLock lk(&mu_);
  auto it = children_.find(Key{parent, name});
  if (it == children_.end()) return 0;
  fuse_ino_t ino = it->second;
  Node* n = nodes_.at(ino).get();
  DetachNameLocked(n, parent, name);
  if (n->parent != 0) return 0;  // still reachable by another name
  MaybeFreeLocked(n);
  return nodes_.count(ino) ? ino : 0;
}

bool InodeTable::AddLink(fuse_ino_t ino, fuse_ino_t parent, const std::string& name) {
  WriterLock lk(&mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || it->second->parent == 0 || !PathLocked(parent)) return false;
  if (children_.count(Key{parent, name})) return false;
  AttachLocked(it->second.get(), parent, name);
  ++it->second->nlookup;
  return true;
}

fuse_ino_t InodeTable::Rename(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
                              const std::string& new_name) {
  WriterLock lk(&mu_);
  auto src = children_.find(Key{parent, name});
  auto dst = children_.find(Key{new_parent, new_name});
  Node* target = dst != children_.end() ? nodes_.at(dst->second).get() : nullptr;
  Node* moved = src != children_.end() ? nodes_.at(src->second).get() : nullptr;
  if (target == moved) return 0;
  if (!nodes_.count(new_parent)) return 0;
  fuse_ino_t target_ino = target ? target->ino : 0;
  // Pin the new parent: detaching the target or the moved node may otherwise
  // free it before we attach.
  Node* np = nodes_.at(new_parent).get();
  ++np->children;
  bool target_named = false;
  if (target) {
    DetachNameLocked(target, new_parent, new_name);
    target_named = target->parent != 0;
    if (!target_named) MaybeFreeLocked(target);
  }
  if (moved) {
    DetachNameLocked(moved, parent, name);
    AttachLocked(moved, new_parent, new_name);
  }
  --np->children;
  MaybeFreeLocked(np);
  return target_ino && !target_named && nodes_.count(target_ino) ? target_ino : 0;
}

void InodeTable::Exchange(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
                          const std::string& new_name) {
  WriterLock lk(&mu_);
  auto a = children_.find(Key{parent, name});
  auto b = children_.find(Key{new_parent, new_name});
  Node* na = a != children_.end() ? nodes_.at(a->second).get() : nullptr;
  Node* nb = b != children_.end() ? nodes_.at(b->second).get() : nullptr;
  if (!nodes_.count(parent) || !nodes_.count(new_parent)) return;
  Node* p1 = nodes_.at(parent).get();
  Node* p2 = nodes_.at(new_parent).get();
  ++p1->children;
  ++p2->children;
  if (na) DetachNameLocked(na, parent, name);
  if (nb) DetachNameLocked(nb, new_parent, new_name);
  if (na) AttachLocked(na, new_parent, new_name);
  if (nb) AttachLocked(nb, parent, name);
  // Unknown to the table: the kernel will look it up again.
  if (na && !nb) MaybeFreeLocked(na);
  --p1->children;
  --p2->children;
  MaybeFreeLocked(p1);
  MaybeFreeLocked(p2);
}

size_t InodeTable::size() const {
  ReaderLock lk(&mu_);
  return nodes_.size();
}

}  // namespace nasfs
