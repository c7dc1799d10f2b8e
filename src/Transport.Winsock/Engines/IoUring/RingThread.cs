using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
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
/// <remarks>
/// Completions are dispatched from the loop only, never from inside <see cref="TryGetSqe"/>: a caller
/// half-way through preparing an entry must not see continuations run under it (one could close the very
/// descriptor the entry is for). A full submission queue is submitted; completions the kernel cannot post
/// meanwhile are copied aside and dispatched by the loop.
/// </remarks>
internal sealed unsafe partial class RingThread : PipeScheduler, IDisposable
{
    // user_data: the low 32 bits an index in the table (0 ignored, 1 the eventfd's read, 2 the resync's
    // barrier, operations from 3), the high 32 its generation; bit 31 of the low word marks the resync's
    // cancel of that user_data (RingThread.Drops.cs).
    private const int FirstIndex = 3;
    private const ulong IgnoredUserData = 0;
    private const uint WakeIndex = 1;
    private const uint BarrierIndex = 2;
    private const uint ResyncBit = 1u << 31;

    [ThreadStatic]
    private static RingThread? t_current;

    private readonly ManualResetEventSlim _ready = new();
    private readonly Thread _thread;
    private readonly ConcurrentQueue<(Action<object?> Action, object? State)> _work = new();
    private readonly Lock _registerLock = new();
    // Freed indexes, each with the generation its last operation reached: the next one there goes on from it.
    private readonly Stack<(int Index, uint Generation)> _freeIndexes = new();
    private readonly Queue<Cqe> _deferred = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ILogger _logger;
    private readonly ulong* _wakeBuffer;
    private Ring? _ring;
    private uint _cqEntries;
    private int _setupErrno;
    private string? _setupRefusal;
    private int _eventFd = -1;
    private RingOperation?[] _operations = new RingOperation?[64];
    private int _registered = FirstIndex;
    private int _sleeping;
    private int _posters;
    private int _draining;
    private int _inFlight;
    private int _connections;
    private bool _wakeArmed;
    private uint _wakeSerial;
    private volatile bool _stopRequested;
    private volatile bool _stopping;
    private int _done;

    private RingThread(string name, ILogger logger)
    {
        _logger = logger;
        _wakeBuffer = (ulong*)NativeMemory.AllocZeroed(8);
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    /// <summary>
    /// Starts a ring thread, which makes its ring itself: with SINGLE_ISSUER the ring belongs to the
    /// thread that set it up, and only that one may submit. Null when the kernel refuses, with why: "failed
    /// with" the errno, or "was refused:" a kernel below <see cref="KernelFloor"/>.
    /// </summary>
    public static RingThread? TryStart(string name, ILogger logger, out string failure)
        // A ring of its own (tests): as if it took one accept.
        => TryStart(name, logger, RingCapacity.ChooseCqEntries(RingCapacity.DescriptorLimit(), acceptSlots: 1), out failure);

    /// <summary>As <see cref="TryStart(string, ILogger, out string)"/>, with a completion queue of <paramref name="cqEntries"/> (<see cref="RingCapacity.ChooseCqEntries"/>).</summary>
    public static RingThread? TryStart(string name, ILogger logger, uint cqEntries, out string failure)
    {
        var thread = new RingThread(name, logger) { _cqEntries = cqEntries };
        thread._thread.Start();
        thread._ready.Wait();
        thread._ready.Dispose();
        failure = thread._setupRefusal is { } refusal ? $"was refused: {refusal}" : $"failed with {LinuxNative.ErrnoName(thread._setupErrno)}";
        if (thread._ring is null)
        {
            NativeMemory.Free(thread._wakeBuffer);
            return null;
        }

        return thread;
    }

    private bool Setup()
    {
        try
        {
            _ring = Ring.TryCreate(RingCapacity.SqEntries, _cqEntries, out _setupErrno);
            if (_ring is null)
            {
                return false;
            }

            // The process's probe checked the floor once; each ring's own setup answers again (a test's seam
            // makes them differ).
            if (KernelFloor.CheckFeatures(_ring.Features) is { } lacking)
            {
                _setupRefusal = lacking;
                _ring.Dispose();
                _ring = null;
                return false;
            }

            if (IoUringVariants.RegisteredFiles)
            {
                // Only where every operation a direct descriptor needs is present, else plain descriptors:
                // IORING_OP_URING_CMD's socket setsockopt came in 6.7, and IORING_OP_FIXED_FD_INSTALL (6.8),
                // which the probe can see, stands for it.
                HasFileTable = _ring.MissingOps([RingConstants.OpShutdown, RingConstants.OpUringCmd, RingConstants.OpFixedFdInstall], out _) == ""
                    && _ring.RegisterSparseFiles(IoUringVariants.FileTableSize) == 0;
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
        catch (IOException)
        {
            // The ring's memory could not be mapped (Ring closed the ring already).
            _ring = null;
            _setupErrno = LinuxNative.ENOMEM;
            return false;
        }
        finally
        {
            _ready.Set();
        }
    }

    /// <summary>The seam where tests make io_uring_enter fail (a ring thread's death), as no kernel does on demand.</summary>
    internal static Func<int>? EnterFault { get; set; }

    /// <summary>Whether the caller runs on this ring's thread (and may prepare entries directly).</summary>
    public bool IsCurrent => t_current == this;

    /// <summary>Set once the ring is stopping: nothing new starts, what is in flight is canceled.</summary>
    public bool IsStopping => _stopping || Volatile.Read(ref _done) != 0;

    /// <summary>Completes once the thread has ended and the ring is closed.</summary>
    public Task Exited => _exited.Task;

    /// <summary>Set when the thread ended on an exception rather than a stop.</summary>
    public Exception? Fault { get; private set; }

    /// <summary>The thread's name (its listener's endpoint and number), for messages.</summary>
    public string Name => _thread.Name ?? "io_uring";

    /// <summary>The completion queue's size, as the kernel set it up.</summary>
    public uint CqEntries => _ring?.CqEntries ?? 0;

    /// <summary>Connections of this ring from their accept to their release (when nothing of theirs is in flight).</summary>
    public int Connections => Volatile.Read(ref _connections);

    public void OnConnectionAttached() => Interlocked.Increment(ref _connections);

    public void OnConnectionReleased() => Interlocked.Decrement(ref _connections);

    /// <summary>
    /// Whether another accept may be posted on this ring with <paramref name="acceptSlots"/> accepts of its
    /// listener on it, so that completions can never exceed its queue (<see cref="RingCapacity"/>).
    /// </summary>
    public bool HasRoomForConnection(int acceptSlots)
        => RingCapacity.HasRoom(Connections, Volatile.Read(ref _finCount), acceptSlots, RingCapacity.MaxInFlight(CqEntries));

    private void Run()
    {
        if (!Setup())
        {
            return;
        }

        t_current = this;
        EngineThread.MarkCurrent();
        try
        {
            Loop();
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

    /// <summary>Work, submissions and completions until a stop has ended everything in flight or its grace ran out.</summary>
    private void Loop()
    {
        var stopDeadline = long.MaxValue;
        while (true)
        {
            RunWork(all: false);
            if (_stopRequested && !_stopping)
            {
                BeginStop();
                stopDeadline = Environment.TickCount64 + (long)StopGrace.TotalMilliseconds;
            }

            if (_stopping && (_inFlight == 0 || Environment.TickCount64 > stopDeadline))
            {
                return;
            }

            if (!_wakeArmed && !_stopping)
            {
                ArmWake();
            }

            // No sleep while a drop waits for its resync (one NextSqe met), or the seam's drop for its EBADR.
            var wait = _wakeArmed && _work.IsEmpty && _deferred.Count == 0 && !_ring!.TryPeek(out _) && !_resyncWanted && !_dropInjected;
            if (wait)
            {
                Interlocked.Exchange(ref _sleeping, 1);
                if (!_work.IsEmpty)
                {
                    Volatile.Write(ref _sleeping, 0);
                    wait = false;
                }
            }

            // Stopping or resyncing, the waits are short and bounded: cancellations land without a spinning
            // core, deadlines are watched, and work posted meanwhile (which wakes no one) runs soon.
            var result = _stopping || Resyncing ? _ring!.Enter(wait: true, timeoutMs: 10) : _ring!.Enter(wait);
            if (EnterFault?.Invoke() is int fault and not 0)
            {
                result = -fault;
            }

            if (_dropInjected)
            {
                _dropInjected = false;
                result = -LinuxNative.EBADR;
            }

            Volatile.Write(ref _sleeping, 0);
            if (result == -LinuxNative.EBADR)
            {
                // The kernel dropped a completion (it could not allocate an overflow entry): not fatal.
                OnDropReported();
            }
            else if (result < 0 && result != -LinuxNative.EBUSY && result != -LinuxNative.EAGAIN && result != -LinuxNative.ETIME)
            {
                throw new IOException($"io_uring_enter failed: {LinuxNative.ErrnoName(-result)}.");
            }

            Reap();
            if (!_stopping)
            {
                StepResync();
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
