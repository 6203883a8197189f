// The launch side of the host emulation (see cuda_emu.h): blocks in a shuffled order (a seeded
// permutation per launch), each block's threads as host threads. One launch at a time in the
// whole process: __shared__ variables are statics, so two blocks must never run at once (tests
// run on several threads).
#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <random>
#include <semaphore>

#include "cuda_emu.h"

// The host threads that play a block's CUDA threads, kept between blocks and launches: starting
// a host thread per CUDA thread per block was most of the emulation's time. Worker i plays
// thread i of each block; run() returns once all `nt` of them are through the block.
struct emu_pool {
    struct worker {
        std::binary_semaphore go{0};
        std::thread t;
    };
    std::vector<std::unique_ptr<worker>> workers;
    std::function<void(unsigned)> job;
    std::atomic<unsigned> running{0};

    void run(unsigned nt, std::function<void(unsigned)> j) {
        job = std::move(j);
        while (workers.size() < nt) {
            // The thread gets its worker, not an index into `workers`, which may grow meanwhile.
            const unsigned i = (unsigned)workers.size();
            worker* w = workers.emplace_back(std::make_unique<worker>()).get();
            w->t = std::thread([this, w, i] { loop(*w, i); });
        }
        running = nt;
        for (unsigned i = 0; i < nt; ++i) workers[i]->go.release();
        for (unsigned r; (r = running.load()) != 0;) running.wait(r);
    }
    void loop(worker& w, unsigned i) {
        for (;;) {
            w.go.acquire();
            job(i);
            if (running.fetch_sub(1) == 1) running.notify_all();
        }
    }
};
// Never destroyed: its threads wait for work until the process ends.
inline emu_pool& emu_threads() {
    static emu_pool* p = new emu_pool;
    return *p;
}

// `shared`: the launch's dynamic shared memory in bytes.
extern "C" int ssl_emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned shared, void** params) {
    std::lock_guard<std::mutex> lock(emu_launch_lock());
    auto it = emu_registry().find(name);
    if (it == emu_registry().end()) return 1;
    const emu_entry f = it->second;
    const unsigned nt = block[0] * block[1] * block[2];
    if (nt == 0 || nt > 1024) return 2;
    if (shared > EMU_BLOCK_SHARED_LIMIT) return 3;
    // Every block of the grid, in a shuffled order (the same for the same launch sequence).
    static std::mt19937_64 order_rng(20261130);
    std::vector<emu_dim3> blocks;
    blocks.reserve((size_t)grid[0] * grid[1] * grid[2]);
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) blocks.push_back({bx, by, bz});
    std::shuffle(blocks.begin(), blocks.end(), order_rng);
    emu_shared_new_launch(shared);
    for (const emu_dim3 b : blocks) {
        const unsigned bx = b.x, by = b.y, bz = b.z;
        emu_shared_poison();
        emu_block blk;
        blk.bar = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w * 32 < nt; ++w)
            blk.warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32u, nt - w * 32)));
        blk.xch.assign(nt, 0);
        blk.mma.assign(nt, emu_mma_slot{});
        blk.ldsm[0].assign(nt, nullptr);
        blk.ldsm[1].assign(nt, nullptr);
        blk.copies.assign(nt, {});
        emu_threads().run(nt, [&](unsigned i) {
            emu_t.tid = {i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
            emu_t.bid = {bx, by, bz};
            emu_t.bdim = {block[0], block[1], block[2]};
            emu_t.gdim = {grid[0], grid[1], grid[2]};
            emu_t.linear = (int)i;
            emu_t.lane = (int)(i % 32);
            emu_t.warp = (int)(i / 32);
            emu_t.block = &blk;
            // A CUDA thread starts with no cp.async in flight (copies a thread left queued end
            // with it) and its ldmatrix slots in the first set.
            emu_cpq = emu_cp_async_queue{};
            emu_ldsm_turn = 0;
            f(params);
            blk.warp_bars[i / 32]->arrive_and_drop();
            blk.bar->arrive_and_drop();
        });
        emu_bank_stats& st = emu_bank_table()[name];
        emu_count_copies(blk, nt, st);
        st.ldsm_phases += blk.ldsm_phases;
        st.ldsm_extra += blk.ldsm_extra;
    }
    return 0;
}

extern "C" int ssl_emu_bank_stats(const char* name, uint64_t* out) {
    std::lock_guard<std::mutex> lock(emu_launch_lock());
    auto it = emu_bank_table().find(name);
    if (it == emu_bank_table().end()) return 1;
    const emu_bank_stats& s = it->second;
    const uint64_t v[6] = {s.cp16_phases, s.cp16_extra, s.cp4_phases, s.cp4_extra, s.ldsm_phases, s.ldsm_extra};
    std::memcpy(out, v, sizeof v);
    return 0;
}
