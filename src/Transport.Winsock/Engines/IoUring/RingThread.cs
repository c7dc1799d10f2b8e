using System.Collections.Concurrent;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A thread of its own that owns one ring (SINGLE_ISSUER): it alone prepares and submits entries and
/// reaps completions, and completions continue inline here. Other threads hand it work through a queue;
/// a thread asleep in io_uring_enter is woken by a write to an eventfd the ring keeps a read posted on,
/// written only when the ring thread said it was going to sleep. It is also the transport's
/// <see cref="PipeScheduler"/>: the pipes' transport-side continuations (the send loop woken by the
/// application's flush, the receive loop released from backpressure) run here, as the I/O does.
/// </summary>
internal sealed unsafe class RingThread : PipeScheduler, IDisposable
{
    private const int FirstIndex = 2;
    private const ulong IgnoredUserData = 0;
    private const ulong WakeUserData = 1;
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(2);

    [ThreadStatic]
    private static RingThread? t_current;

    private readonly ManualResetEventSlim _ready = new();
    private readonly Thread _thread;
    private Ring? _ring;
    private int _setupErrno;
    private readonly ConcurrentQueue<(Action<object?> Action, object? State)> _work = new();
    private readonly Lock _registerLock = new();
    private readonly Stack<int> _freeIndexes = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ILogger _logger;
    private int _eventFd = -1;
    private readonly ulong* _wakeBuffer;
    private RingOperation?[] _operations = new RingOperation?[64];
    private int _registered = FirstIndex;
    private int _sleeping;
    private int _inFlight;
    private volatile bool _stopRequested;
    private volatile bool _stopping;
    private volatile bool _done;

    private RingThread(string name, ILogger logger)
    {
        _logger = logger;
        _wakeBuffer = (ulong*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(8);
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    /// <summary>
    /// Starts a ring thread, which makes its ring itself: with SINGLE_ISSUER the ring belongs to the
    /// thread that set it up, and only that one may submit. Null, with the errno, when the kernel refuses.
    /// </summary>
    public static RingThread? TryStart(string name, ILogger logger, out int errno)
    {
        var thread = new RingThread(name, logger);
        thread._thread.Start();
        thread._ready.Wait();
        thread._ready.Dispose();
        errno = thread._setupErrno;
        if (thread._ring is null)
        {
            System.Runtime.InteropServices.NativeMemory.Free(thread._wakeBuffer);
            return null;
        }

        return thread;
    }

    private bool Setup()
    {
        try
        {
            _ring = Ring.TryCreate(entries: 1024, cqEntries: 16384, out _setupErrno);
            if (_ring is null)
            {
                return false;
            }

            _eventFd = LinuxNative.EventFd(0, LinuxNative.EFD_CLOEXEC);
            if (_eventFd < 0)
            {
                _setupErrno = LinuxNative.Errno;
                _ring.Dispose();
                _ring = null;
                return false;
            }

            return true;
        }
        finally
        {
            _ready.Set();
        }
    }

    /// <summary>Whether the caller runs on this ring's thread (and may prepare entries directly).</summary>
    public bool IsCurrent => t_current == this;

    /// <summary>Set once the ring is stopping: nothing new starts, what is in flight is canceled.</summary>
    public bool IsStopping => _stopping || _done;

    /// <summary>Completes once the thread has ended and the ring is closed.</summary>
    public Task Exited => _exited.Task;

    /// <summary>Set when the thread ended on an exception rather than a stop.</summary>
    public Exception? Fault { get; private set; }

    /// <summary>Gives an operation its index in the table completions are dispatched by.</summary>
    public int Register(RingOperation operation)
    {
        lock (_registerLock)
        {
            if (_freeIndexes.TryPop(out var free))
            {
                _operations[free] = operation;
                return free;
            }

            var index = _registered++;
            if (index >= _operations.Length)
            {
                var grown = new RingOperation?[_operations.Length * 2];
                _operations.CopyTo(grown, 0);
                Volatile.Write(ref _operations, grown);
            }

            _operations[index] = operation;
            return index;
        }
    }

    /// <summary>
    /// Frees an operation's index for a later one: its object is retired, with nothing in flight (its
    /// connection or listener is done), so no completion can still come for it.
    /// </summary>
    public void Unregister(RingOperation operation)
    {
        lock (_registerLock)
        {
            if (ReferenceEquals(_operations[operation.Index], operation))
            {
                _operations[operation.Index] = null;
                _freeIndexes.Push(operation.Index);
            }
        }
    }

    public override void Schedule(Action<object?> action, object? state) => Post(action, state);

    /// <summary>Runs <paramref name="action"/> on the ring thread, soon; wakes the thread if it sleeps.</summary>
    public void Post(Action<object?> action, object? state)
    {
        _work.Enqueue((action, state));
        if (_done)
        {
            // The thread has ended: nothing will run the queue but us (every entry point fails fast now).
            RunWork();
            return;
        }

        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.CompareExchange(ref _sleeping, 0, 1) == 1)
        {
            ulong one = 1;
            LinuxNative.Write(_eventFd, &one, 8);
        }
    }

    /// <summary>
    /// On the ring thread: a zeroed submission entry, after submitting what is queued if the queue is full;
    /// null when the ring is stopping.
    /// </summary>
    public Sqe* TryGetSqe()
    {
        if (_stopping || _done)
        {
            return null;
        }

        var sqe = _ring!.TryGetSqe();
        while (sqe is null)
        {
            _ring!.Enter(wait: false);
            Reap();
            sqe = _ring!.TryGetSqe();
        }

        return sqe;
    }

    /// <summary>Counts a submission in flight (see <see cref="RingOperation"/>).</summary>
    public void OnSubmitted() => _inFlight++;

    /// <summary>On the ring thread: cancels the submission with <paramref name="userData"/>, if still in flight.</summary>
    public void Cancel(ulong userData)
    {
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            return;
        }

        sqe->Opcode = RingConstants.OpAsyncCancel;
        sqe->Fd = -1;
        sqe->Addr = userData;
        sqe->UserData = IgnoredUserData;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
    }

    /// <summary>
    /// On the ring thread: closes <paramref name="fd"/> in submission order, after every entry already
    /// prepared for it (IORING_OP_CLOSE), so none of them can meet a descriptor number reused meanwhile.
    /// </summary>
    public void Close(int fd)
    {
        var sqe = TryGetSqe();
        if (sqe is null)
        {
            LinuxNative.Close(fd);
            return;
        }

        sqe->Opcode = RingConstants.OpClose;
        sqe->Fd = fd;
        sqe->UserData = IgnoredUserData;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
    }

    /// <summary>Asks the thread to stop: what is in flight is canceled, then the thread ends and closes the ring.</summary>
    public Task StopAsync()
    {
        _stopRequested = true;
        Post(static _ => { }, null);
        return _exited.Task;
    }

    private void Run()
    {
        if (!Setup())
        {
            return;
        }

        t_current = this;
        try
        {
            PostWakeRead();
            var stopDeadline = long.MaxValue;
            while (true)
            {
                RunWork();
                if (_stopRequested && !_stopping)
                {
                    // Everything still in flight ends now, as a local abort.
                    var sqe = _ring!.TryGetSqe();
                    if (sqe is not null)
                    {
                        sqe->Opcode = RingConstants.OpAsyncCancel;
                        sqe->Fd = -1;
                        sqe->OpFlags = RingConstants.CancelAny | RingConstants.CancelAll;
                        sqe->UserData = IgnoredUserData;
                    }

                    _stopping = true;
                    stopDeadline = Environment.TickCount64 + (long)StopGrace.TotalMilliseconds;
                }

                if (_stopping && (_inFlight == 0 || Environment.TickCount64 > stopDeadline))
                {
                    break;
                }

                var wait = _work.IsEmpty && !_ring!.TryPeek(out _) && !_stopping;
                if (wait)
                {
                    Interlocked.Exchange(ref _sleeping, 1);
                    if (!_work.IsEmpty)
                    {
                        Volatile.Write(ref _sleeping, 0);
                        wait = false;
                    }
                }

                var result = _ring!.Enter(wait);
                Volatile.Write(ref _sleeping, 0);
                if (result < 0 && result != -LinuxNative.EBUSY && result != -LinuxNative.EAGAIN && result != -LinuxNative.ETIME)
                {
                    throw new IOException($"io_uring_enter failed: {LinuxNative.ErrnoName(-result)}.");
                }

                Reap();
                if (_stopping && !wait)
                {
                    // Let cancellations land without spinning a core.
                    Thread.Sleep(1);
                }
            }
        }
        catch (Exception ex)
        {
            Fault = ex;
            _logger.RingThreadFailed(_thread.Name ?? "io_uring", ex);
        }
        finally
        {
            Exit();
        }
    }

    private void Exit()
    {
        _stopping = true;
        // Whatever is still in flight (past the grace, or after a fault) ends as a local abort, so no
        // connection's loop is left waiting on a ring that is gone; their descriptors close directly.
        var operations = Volatile.Read(ref _operations);
        for (var i = FirstIndex; i < operations.Length; i++)
        {
            if (operations[i] is { InFlight: true } operation)
            {
                _inFlight--;
                _ = operation.OnCompletion(operation.CurrentUserData, -LinuxNative.ECANCELED, 0);
            }
        }

        _done = true;
        RunWork();
        t_current = null;
        _ring!.Dispose();
        LinuxNative.Close(_eventFd);
        System.Runtime.InteropServices.NativeMemory.Free(_wakeBuffer);
        _exited.TrySetResult();
    }

    private void RunWork()
    {
        // Bounded, so that completions are reaped between bursts of posted work.
        for (var i = 0; i < 1024 && _work.TryDequeue(out var item); i++)
        {
            try
            {
                item.Action(item.State);
            }
            catch (Exception ex)
            {
                _logger.RingWorkFailed(ex);
            }
        }
    }

    private void PostWakeRead()
    {
        var sqe = _ring!.TryGetSqe();
        if (sqe is null)
        {
            return;
        }

        sqe->Opcode = RingConstants.OpRead;
        sqe->Fd = _eventFd;
        sqe->Addr = (ulong)_wakeBuffer;
        sqe->Len = 8;
        sqe->UserData = WakeUserData;
    }

    private void Reap()
    {
        var operations = Volatile.Read(ref _operations);
        while (_ring!.TryPeek(out var cqe))
        {
            _ring!.Advance();
            var index = (int)(uint)cqe.UserData;
            if (cqe.UserData == WakeUserData)
            {
                if (!_stopping)
                {
                    PostWakeRead();
                }

                continue;
            }

            if (index < FirstIndex)
            {
                continue;
            }

            if (index >= operations.Length)
            {
                operations = Volatile.Read(ref _operations);
            }

            if (operations[index]?.OnCompletion(cqe.UserData, cqe.Res, cqe.Flags) == true)
            {
                _inFlight--;
            }
        }
    }

    public void Dispose()
    {
        if (!_exited.Task.IsCompleted)
        {
            StopAsync().GetAwaiter().GetResult();
        }
    }
}
