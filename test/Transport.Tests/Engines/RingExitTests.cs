using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// How a ring thread ends with operations still in flight, on a real ring: the kernel may still write into
/// what an operation holds, so nothing of a stuck operation is released (its pinned buffers stay pinned,
/// its waiter is not told it ended), and every completion the kernel did post is dispatched before the
/// ring goes, so an accepted descriptor is never lost; the exit still ends in bounded time. Cancels that do
/// not reach an operation (as for one deep in a driver) and a completion posted after the loop's last look
/// at the queue are seams (<see cref="RingThread.CancelFault"/>, <see cref="RingThread.LoopEndFault"/>): a
/// receive on a socket nobody writes to is always canceled here.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class RingExitTests
{
    private const int EFAULT = 14;

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Operations_no_cancel_reaches_keep_their_memory_pinned_and_the_exit_is_bounded(bool fault)
    {
        var log = new CapturedLog();
        var thread = StartThread(log);
        using var pair = SocketPair.Create();
        var io = new IoUringConnectionIo(thread);
        io.Attach((int)pair.Server.Handle, isFixed: false, null, null);
        var receiveMemory = new TrackedMemory(4096);
        var sendMemory = new TrackedMemory(4 << 20);
        var receive = io.ReceiveAsync(receiveMemory.Memory).AsTask();
        // Far more than the two small socket buffers hold, to a peer that never reads: the send stays pending.
        var send = io.SendAsync(new ReadOnlySequence<byte>(sendMemory.Memory)).AsTask();
        Assert.True(
            await Eventually.TrueAsync(() => receiveMemory.Held == 1 && sendMemory.Held == 1, TimeSpan.FromSeconds(10)),
            $"receive pins {receiveMemory.Held}, send pins {sendMemory.Held}");
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(receive.IsCompleted);
        Assert.False(send.IsCompleted);
        var sendUnpins = sendMemory.Unpins;

        RingThread.CancelFault = true;
        RingThread.StopGrace = TimeSpan.FromMilliseconds(200);
        try
        {
            var watch = Stopwatch.StartNew();
            if (fault)
            {
                // The next io_uring_enter of the loop fails: the thread dies with both in flight.
                RingThread.EnterFault = () => EFAULT;
                thread.Post(static _ => { }, null);
                await thread.Exited.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
                Assert.NotNull(thread.Fault);
            }
            else
            {
                await thread.StopAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            }

            TestContext.Current.SendDiagnosticMessage($"exit took {watch.ElapsedMilliseconds} ms; {string.Join(" | ", log.Entries.Select(e => $"{e.Level} {e.EventId.Name}: {e.Message}"))}");
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"the exit took {watch.Elapsed}");
        }
        finally
        {
            RingThread.CancelFault = false;
            RingThread.EnterFault = null;
            RingThread.StopGrace = TimeSpan.FromSeconds(2);
        }

        // The kernel may still write into the receive's buffer and read the send's: neither is unpinned,
        // and their waiters (the connection's loops, which would hand the memory back) never resume.
        await Task.Delay(200, TestContext.Current.CancellationToken);
        Assert.False(receive.IsCompleted, "the stuck receive was completed (its buffer would go back to its pool)");
        Assert.False(send.IsCompleted, "the stuck send was completed (its buffer would go back to its pool)");
        Assert.Equal(0, receiveMemory.Unpins);
        Assert.Equal(sendUnpins, sendMemory.Unpins);
        // Counted and said, as the kernel fault it is.
        Assert.Equal(2, thread.QuarantinedOperations);
        Assert.Contains(log.Entries, e => e.EventId.Name == "RingOperationsQuarantined" && e.Level == LogLevel.Warning);
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task A_plain_stop_ends_what_is_in_flight_quarantines_nothing_and_logs_nothing_above_Debug()
    {
        for (var i = 0; i < 20; i++)
        {
            var log = new CapturedLog();
            var thread = StartThread(log);
            using var pair = SocketPair.Create();
            var io = new IoUringConnectionIo(thread);
            io.Attach((int)pair.Server.Handle, isFixed: false, null, null);
            var receiveMemory = new TrackedMemory(4096);
            var receive = io.ReceiveAsync(receiveMemory.Memory).AsTask();
            Assert.True(await Eventually.TrueAsync(() => receiveMemory.Held == 1, TimeSpan.FromSeconds(10)));

            var watch = Stopwatch.StartNew();
            await thread.StopAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1), $"a stop took {watch.Elapsed}");
            var error = await Assert.ThrowsAsync<SocketException>(() => receive);
            Assert.Equal(SocketError.OperationAborted, error.SocketErrorCode);
            Assert.Equal(0, receiveMemory.Held);
            Assert.Equal(0, thread.QuarantinedOperations);
            Assert.Null(thread.FinalCancel);
            Assert.True(log.Entries.All(e => e.Level <= LogLevel.Debug), string.Join(" | ", log.Entries.Select(e => $"{e.Level} {e.EventId.Name}: {e.Message}")));
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task What_the_stops_first_cancel_missed_the_second_ends_and_its_memory_is_released_after_the_kernel_let_go()
    {
        var thread = StartThread(new CapturedLog());
        using var pair = SocketPair.Create();
        var io = new IoUringConnectionIo(thread);
        io.Attach((int)pair.Server.Handle, isFixed: false, null, null);
        var receiveMemory = new TrackedMemory(4096);
        var receive = io.ReceiveAsync(receiveMemory.Memory).AsTask();
        Assert.True(await Eventually.TrueAsync(() => receiveMemory.Held == 1, TimeSpan.FromSeconds(10)));

        // The stop's own cancel misses; the one after the grace reaches.
        RingThread.CancelFault = true;
        RingThread.StopGrace = TimeSpan.FromMilliseconds(600);
        try
        {
            var stopped = thread.StopAsync();
            await Task.Delay(200, TestContext.Current.CancellationToken);
            Assert.False(receive.IsCompleted);
            RingThread.CancelFault = false;
            await stopped.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        }
        finally
        {
            RingThread.CancelFault = false;
            RingThread.StopGrace = TimeSpan.FromSeconds(2);
        }

        TestContext.Current.SendDiagnosticMessage($"final cancel: {thread.FinalCancel}");
        // From 6.0 the synchronous cancel, answered 0 (a malformed request is refused); before, the asynchronous one.
        Assert.Equal(
            Environment.OSVersion.Version >= new Version(6, 0) ? "IORING_REGISTER_SYNC_CANCEL: 0" : "IORING_ASYNC_CANCEL_ANY | ALL",
            thread.FinalCancel);
        var error = await Assert.ThrowsAsync<SocketException>(() => receive);
        Assert.Equal(SocketError.OperationAborted, error.SocketErrorCode);
        Assert.Equal(0, receiveMemory.Held);
        Assert.Equal(0, thread.QuarantinedOperations);
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task An_accept_the_kernel_completed_as_the_ring_exits_is_dispatched_and_its_descriptor_not_leaked()
    {
        var thread = StartThread(new CapturedLog());
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(4);
        var accept = new TestAccept(thread, (int)listener.Handle);
        accept.Submit();
        // Posted and in the kernel (its submission went in with the loop's next enter).
        await Task.Delay(200, TestContext.Current.CancellationToken);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var before = ProcessSockets.CountOnPort(port);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

        // A client arrives after the loop's last look at the completion queue: the ring is entered once
        // more, which posts the accept's completion, a new descriptor, that nobody has reaped.
        RingThread.CancelFault = true;
        RingThread.StopGrace = TimeSpan.FromMilliseconds(200);
        RingThread.LoopEndFault = () => client.Connect(listener.LocalEndPoint!);
        try
        {
            await thread.StopAsync().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        }
        finally
        {
            RingThread.CancelFault = false;
            RingThread.LoopEndFault = null;
            RingThread.StopGrace = TimeSpan.FromSeconds(2);
        }

        var result = await accept.Result.Task.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.True(result >= 0, $"the accept ended with {result}, not with the descriptor the kernel gave it");
        // The descriptor was closed by its owner (the test's operation): only the client's own socket is new.
        // Counted by port, so that a socket of an earlier test closing meanwhile does not count.
        var after = ProcessSockets.CountOnPort(port);
        Assert.Equal(before.Remote + 1, after.Remote);
        Assert.Equal(before.Local, after.Local);
        client.ReceiveTimeout = 5000;
        Assert.Equal(0, client.Receive(new byte[1]));
    }

    private static RingThread StartThread(CapturedLog log)
    {
        var thread = RingThread.TryStart("io_uring exit test", log.CreateLogger("Transport.Winsock"), out var failure);
        Assert.True(thread is not null, $"no ring: {failure}");
        return thread;
    }

    /// <summary>A loopback connection with small buffers; the test's side never reads or writes.</summary>
    private sealed class SocketPair : IDisposable
    {
        private SocketPair(Socket client, Socket server)
        {
            Client = client;
            Server = server;
        }

        public Socket Client { get; }

        public Socket Server { get; }

        public static SocketPair Create()
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 16384 };
            client.Connect(listener.LocalEndPoint!);
            var server = listener.Accept();
            server.SendBufferSize = 16384;
            return new SocketPair(client, server);
        }

        public void Dispose()
        {
            Client.Dispose();
            Server.Dispose();
        }
    }

    /// <summary>Memory that counts its pins and unpins, as the pipe's pool memory is pinned for the kernel.</summary>
    private sealed unsafe class TrackedMemory(int size) : MemoryManager<byte>
    {
        private readonly byte[] _array = GC.AllocateArray<byte>(size, pinned: true);
        private int _pins;
        private int _unpins;

        public int Unpins => Volatile.Read(ref _unpins);

        /// <summary>Pins not yet given back.</summary>
        public int Held => Volatile.Read(ref _pins) - Unpins;

        public override Span<byte> GetSpan() => _array;

        public override MemoryHandle Pin(int elementIndex = 0)
        {
            Interlocked.Increment(ref _pins);
            return new MemoryHandle(Unsafe.AsPointer(ref _array[elementIndex]), default, this);
        }

        public override void Unpin() => Interlocked.Increment(ref _unpins);

        protected override void Dispose(bool disposing)
        {
        }
    }

    /// <summary>An IORING_OP_ACCEPT of the test's own; it closes what it accepts.</summary>
    private sealed unsafe class TestAccept(RingThread thread, int listenFd) : RingOperation(thread)
    {
        public TaskCompletionSource<int> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Submit() => Thread.Post(static state =>
        {
            var accept = (TestAccept)state!;
            var sqe = accept.Thread.TryGetSqe();
            sqe->Opcode = RingConstants.OpAccept;
            sqe->Fd = accept._listenFd;
            sqe->OpFlags = 0x80000; // SOCK_CLOEXEC
            sqe->UserData = accept.NextUserData();
        }, this);

        private readonly int _listenFd = listenFd;

        protected override void Complete(int result, uint flags)
        {
            if (result >= 0)
            {
                LinuxNative.Close(result);
            }

            Result.TrySetResult(result);
        }
    }
}
