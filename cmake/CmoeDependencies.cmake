# Third-party dependencies, all from Debian packages (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json 3.10 CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
# libsentencepiece: optional, only tests/engine/sentencepiece_oracle_test.cc uses it (as the
# oracle); the engine reads tokenizer.model itself (its bundled protobuf clashes with gRPC's).
pkg_check_modules(SENTENCEPIECE QUIET IMPORTED_TARGET sentencepiece)
if(CMOE_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
  include(GoogleTest)
endif()
if(CMOE_BUILD_BENCHMARKS)
  find_package(benchmark CONFIG REQUIRED)
endif()
# LEMON (network simplex for the carving's balanced assignment). Its config file sets variables
# only; wrap them in a target.
find_package(lemon CONFIG REQUIRED)
add_library(cmoe::lemon INTERFACE IMPORTED)
target_include_directories(cmoe::lemon INTERFACE ${LEMON_INCLUDE_DIRS})
target_link_libraries(cmoe::lemon INTERFACE ${LEMON_LIBRARIES})
# gRPC and protobuf (the server layer only; docs/architecture.md "Modules"). Debian 12 ships
# FindProtobuf-compatible files (no protobuf-config.cmake) and grpc++.pc; the gRPCConfig.cmake of
# libgrpc-dev works too but drags in c-ares, re2, OpenSSL and ZLIB lookups, so we use pkg-config.
# Sets cmoe::grpcpp, cmoe::grpcpp_reflection and CMOE_GRPC_CPP_PLUGIN (for protoc).
find_package(Protobuf 3.15 REQUIRED)  # 3.15: proto3 `optional`
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++>=1.38)
find_program(CMOE_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED
             DOC "gRPC's protoc plugin (Debian: protobuf-compiler-grpc)")
find_library(CMOE_GRPCPP_REFLECTION_LIBRARY grpc++_reflection REQUIRED
             HINTS ${GRPCPP_LIBRARY_DIRS} DOC "gRPC server reflection (Debian: libgrpc++-dev)")
add_library(cmoe::grpcpp INTERFACE IMPORTED)
target_link_libraries(cmoe::grpcpp INTERFACE PkgConfig::GRPCPP protobuf::libprotobuf)
add_library(cmoe::grpcpp_reflection INTERFACE IMPORTED)
target_link_libraries(cmoe::grpcpp_reflection INTERFACE ${CMOE_GRPCPP_REFLECTION_LIBRARY}
                                                        cmoe::grpcpp)
# Prometheus metrics (the server's /metrics endpoint; Debian: prometheus-cpp-dev). Targets
# prometheus-cpp::core (registry, metric types, text serializer) and prometheus-cpp::pull (Exposer).
find_package(prometheus-cpp CONFIG REQUIRED)
