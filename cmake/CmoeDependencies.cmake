# Third-party dependencies, all from Debian packages (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json 3.10 CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
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
