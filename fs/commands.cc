#include "fs/commands.h"

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "fs/verify.h"

namespace nasfs {
namespace {

using control::ControlServer;

nlohmann::json Failure(std::string error) { return nlohmann::json{{"ok", false}, {"error", std::move(error)}}; }

nlohmann::json JournalCommand(Nasfs& fs, const nlohmann::json& req) {
  auto limit = ControlServer::CountArgument(req, "limit", 100, 1000000);
  if (!limit) return Failure(limit.error());
  nlohmann::json answer = fs.JournalList(*limit);
  ControlServer::TrimToFit(answer, "entries");
  return answer;
}

nlohmann::json ReplayCommand(Nasfs& fs, const nlohmann::json& req) {
  auto node = req.find("node");
  if (node == req.end()) return fs.ReplayNow();
  if (!node->is_string() || node->get<std::string>().empty()) return Failure("\"node\" must be a name");
  return fs.ReplayNode(node->get<std::string>());
}

nlohmann::json ConflictsCommand(Nasfs& fs, const nlohmann::json& req) {
  auto id = req.find("restore");
  if (id == req.end()) {
    nlohmann::json answer = fs.Conflicts();
    ControlServer::TrimToFit(answer, "conflicts");
    return answer;
  }
  if (!id->is_string()) return Failure("\"restore\" must be a conflict id");
  return fs.RestoreConflict(id->get<std::string>());
}

nlohmann::json VerifyCommand(Nasfs& fs, const nlohmann::json& req, std::stop_token stop, std::atomic<bool>* running) {
  auto max = ControlServer::CountArgument(req, "max", 1000, 100000);
  if (!max) return Failure(max.error());
  // Two walks at once would only double the load on both NAS.
  if (running->exchange(true)) return Failure("a verify is already running on this mount; try again once it has finished");
  struct Release {
    std::atomic<bool>& flag;
    ~Release() { flag = false; }
  } release{*running};
  return VerifyTrees(fs.master(), fs.backup(), *max, std::move(stop));
}

}  // namespace

std::unique_ptr<ControlServer> NewControlServer(const Options& opts, Nasfs& fs) {
  auto control = std::make_unique<ControlServer>(opts.control_socket, opts.control_gid, [&fs](const nlohmann::json& req) {
    const auto cmd = req.find("cmd");
    if (cmd == req.end() || !cmd->is_string()) return Failure("bad request: no \"cmd\" string");
    if (*cmd == "status") return fs.Status();
    return Failure("unknown command '" + cmd->get<std::string>() + "'");
  });
  control->AddLongCommand("journal",
                          [&fs](const nlohmann::json& req, std::stop_token) { return JournalCommand(fs, req); });
  control->AddLongCommand("replay",
                          [&fs](const nlohmann::json& req, std::stop_token) { return ReplayCommand(fs, req); });
  control->AddLongCommand("conflicts",
                          [&fs](const nlohmann::json& req, std::stop_token) { return ConflictsCommand(fs, req); });
  control->AddLongCommand("verify", [&fs, running = std::make_shared<std::atomic<bool>>(false)](
                                        const nlohmann::json& req, std::stop_token stop) {
    return VerifyCommand(fs, req, std::move(stop), running.get());
  });
  return control;
}

}  // namespace nasfs
