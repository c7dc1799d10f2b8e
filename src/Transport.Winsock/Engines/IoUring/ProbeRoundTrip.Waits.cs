using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>The round trip's submissions and bounded waits, and its end: what is left canceled, memory the kernel may hold kept.</summary>
internal sealed unsafe partial class ProbeRoundTrip
{
    private Sqe* Next(ulong userData, byte opcode, bool expectCompletion = true)
    {
        // The probe's ring has 8 entries, and no step prepares more than 3 before they are submitted.
        var sqe = _ring.TryGetSqe();
        sqe->Opcode = opcode;
        sqe->UserData = userData;
        if (expectCompletion)
        {
            _inFlight.Add(userData);
        }

        return sqe;
    }

    private void Submit() => Check(_ring.Enter(wait: false));

    /// <summary>The result of <paramref name="userData"/>'s completion, or why there is none (<paramref name="failed"/>).</summary>
    private int Await(ulong userData, string op, out string? failed)
    {
        var deadline = Environment.TickCount64 + WaitMs;
        while (true)
        {
            Collect();
            if (_completions.Remove(userData, out var result))
            {
                failed = null;
                return IoUringProbe.ResultFault?.Invoke(op, result) ?? result;
            }

            var left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                failed = $"{op} did not complete within {WaitMs / 1000} s (held by a sandbox or a security module?)";
                return 0;
            }

            Check(_ring.Enter(wait: true, (int)left));
        }
    }

    private static void Check(int entered)
    {
        if (entered < 0 && entered is not (-LinuxNative.ETIME or -LinuxNative.EBUSY or -LinuxNative.EAGAIN))
        {
            throw new IOException($"io_uring_enter failed with {LinuxNative.ErrnoName(-entered)}");
        }
    }

    private void Collect()
    {
        while (_ring.TryPeek(out var cqe))
        {
            _ring.Advance();
            _completions[cqe.UserData] = cqe.Res;
            _inFlight.Remove(cqe.UserData);
        }
    }

    /// <summary>
    /// Cancels what is still in flight and waits for it, bounded; memory the kernel may still hold is
    /// never freed (a few hundred bytes, once per process, and only on a failed probe).
    /// </summary>
    public void Dispose()
    {
        if (_inFlight.Count > 0)
        {
            // Each by its user_data, which every kernel with io_uring cancels (not ANY | ALL, which 5.18 refuses).
            foreach (var userData in _inFlight)
            {
                var sqe = _ring.TryGetSqe();
                if (sqe is null)
                {
                    _ring.Enter(wait: false);
                    sqe = _ring.TryGetSqe();
                }

                if (sqe is not null)
                {
                    sqe->Opcode = RingConstants.OpAsyncCancel;
                    sqe->Fd = -1;
                    sqe->Addr = userData;
                    sqe->Flags = RingConstants.SqeCqeSkipSuccess;
                }
            }

            var deadline = Environment.TickCount64 + WaitMs;
            while (_inFlight.Count > 0)
            {
                var left = deadline - Environment.TickCount64;
                var entered = left > 0 ? _ring.Enter(wait: true, (int)left) : -LinuxNative.ETIME;
                Collect();
                if (entered == -LinuxNative.ETIME || (entered < 0 && entered is not (-LinuxNative.EBUSY or -LinuxNative.EAGAIN)))
                {
                    break;
                }
            }
        }

        if (_accepted >= 0)
        {
            LinuxNative.Close(_accepted);
        }

        if (_eventFd >= 0)
        {
            LinuxNative.Close(_eventFd);
        }

        if (_inFlight.Count == 0)
        {
            NativeMemory.Free(_memory);
        }
    }
}
